package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

type doctorReport struct {
	Checks []smolvm.Check `json:"checks"`
	// Leftovers is nil (null) through a server, which reports its checks only.
	Leftovers []smolvm.Leftover `json:"leftovers"`
	Fixed     bool              `json:"fixed,omitempty"`
	// Server is the server whose host was checked (--host).
	Server string `json:"server,omitempty"`
}

func newDoctorCmd(g *globalOptions) *cobra.Command {
	var fix bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what this host needs to run VMs, and how to fix what is missing",
		Long: "Check what this host has and lacks for running VMs, each with a fix.\n" +
			"smolvm exits 1 when a required check fails; KVM and TAP networking are\n" +
			"optional (without them VMs are slower, or use user-mode networking).\n" +
			"It also lists leftovers: QEMU processes, TAP devices, nftables rules and\n" +
			"VM directories that belong to no VM; --fix removes them.",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var r doctorReport
			var err error
			if fix {
				if err := g.mustLocal("doctor --fix", "run it on the server's machine"); err != nil {
					return err
				}
			}
			if r.Checks, err = g.vms().Doctor(ctx); err != nil {
				return err
			}
			if g.remote != nil {
				r.Server = g.host
			} else {
				if r.Leftovers, err = smolvm.FindLeftovers(ctx, g.sdk()...); err != nil {
					return err
				}
				if r.Leftovers == nil {
					r.Leftovers = []smolvm.Leftover{}
				}
			}
			if fix && len(r.Leftovers) > 0 {
				if err := smolvm.RemoveLeftovers(ctx, r.Leftovers); err != nil {
					return err
				}
				r.Fixed = true
			}
			checks := r.Checks
			if err := g.output(cmd.OutOrStdout(), r, func(w io.Writer) error {
				if err := writeChecks(w, checks); err != nil {
					return err
				}
				return writeLeftovers(w, r)
			}); err != nil {
				return err
			}
			for _, c := range checks {
				if !c.OK && !c.Optional {
					return exitCodeError{1}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&fix, "fix", false, "remove leftovers that belong to no VM")
	return cmd
}

func writeLeftovers(w io.Writer, r doctorReport) error {
	if r.Server != "" {
		_, err := fmt.Fprintf(w, "Leftovers are not checked through a server: run 'smolvm doctor' on the machine of %s.\n", r.Server)
		return err
	}
	if len(r.Leftovers) == 0 {
		_, err := fmt.Fprintln(w, "No leftovers: every QEMU process, TAP device, rule and VM directory belongs to a VM.")
		return err
	}
	verb := "found"
	if r.Fixed {
		verb = "removed"
	}
	fmt.Fprintf(w, "\nLeftovers %s:\n", verb)
	for _, l := range r.Leftovers {
		fmt.Fprintf(w, "  %-7s %s: %s\n", l.Kind, l.Name, l.Detail)
	}
	if !r.Fixed {
		_, err := fmt.Fprintln(w, "Run 'smolvm doctor --fix' to remove them.")
		return err
	}
	return nil
}

// writeChecks prints one line per check, with the fix under failures.
func writeChecks(w io.Writer, checks []smolvm.Check) error {
	failed, warned := 0, 0
	for _, c := range checks {
		mark := "ok  "
		switch {
		case !c.OK && c.Optional:
			mark = "warn"
			warned++
		case !c.OK:
			mark = "FAIL"
			failed++
		}
		fmt.Fprintf(w, "%s  %s: %s\n", mark, c.Name, c.Detail)
		if !c.OK && c.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", c.Fix)
		}
	}
	var err error
	switch {
	case failed > 0:
		_, err = fmt.Fprintf(w, "\n%d required check(s) failed: VMs cannot run until they are fixed.\n", failed)
	case warned > 0:
		_, err = fmt.Fprintf(w, "\nReady to run VMs (%d optional feature(s) missing).\n", warned)
	default:
		_, err = fmt.Fprintln(w, "\nReady to run VMs.")
	}
	return err
}
