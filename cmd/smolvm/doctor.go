package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

func newDoctorCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check what this host needs to run VMs, and how to fix what is missing",
		Long: "Check what this host has and lacks for running VMs, each with a fix.\n" +
			"smolvm exits 1 when a required check fails; KVM and TAP networking are\n" +
			"optional (without them VMs are slower, or use user-mode networking).",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := smolvm.Doctor(cmd.Context(), g.sdk()...)
			if err := g.output(cmd.OutOrStdout(), checks, func(w io.Writer) error {
				return writeChecks(w, checks)
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
