package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/smolvm/smolvm"
)

// newSnapshotCmd is `smolvm snapshot`: capture, list, inspect and remove
// snapshots.
func newSnapshotCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Capture a running VM (memory, devices, disk) and make new VMs from it",
		Long: "Capture a running VM: its memory, device state and disk, or with --disk-only\n" +
			"its disk alone. VMs made from a snapshot (create --from-snapshot, run\n" +
			"--from-snapshot) resume where it was taken, as new machines of their own.",
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newSnapshotCreateCmd(g), newSnapshotListCmd(g), newSnapshotInspectCmd(g), newSnapshotRmCmd(g))
	return cmd
}

type snapshotCreateOptions struct {
	diskOnly bool
}

func newSnapshotCreateCmd(g *globalOptions) *cobra.Command {
	var o snapshotCreateOptions
	cmd := &cobra.Command{
		Use:   "create ID NAME",
		Short: "Capture the running VM ID as the snapshot NAME",
		Long: "Capture the running VM ID as the snapshot NAME. The VM is paused only for the\n" +
			"capture and runs on unchanged. It prints the name and how long the VM was\n" +
			"paused (--json: the snapshot's info).",
		Example: "  smolvm snapshot create web warm\n" +
			"  smolvm create --from-snapshot warm\n" +
			"  smolvm snapshot create --disk-only web base",
		Args:              exactArgs(2, "snapshot create takes a VM id and a snapshot name: smolvm snapshot create ID NAME"),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				info, err := vm.Snapshot(cmd.Context(), args[1], o.diskOnly)
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), info, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s (paused %s)\n", info.Name, info.Paused.Round(time.Millisecond))
					return err
				})
			})
		},
	}
	cmd.Flags().BoolVar(&o.diskOnly, "disk-only", false, "capture the disk alone: VMs made from the snapshot boot instead of resuming")
	return cmd
}

func newSnapshotListCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:          "list",
		Aliases:      []string{"ls"},
		Short:        "List snapshots",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			snaps, err := g.vms().ListSnapshots(cmd.Context())
			if err != nil {
				return err
			}
			return g.output(cmd.OutOrStdout(), snaps, func(w io.Writer) error {
				return writeSnapshotTable(w, snaps, time.Now())
			})
		},
	}
}

func snapshotKind(s smolvm.SnapshotInfo) string {
	if s.DiskOnly {
		return "disk"
	}
	return "memory"
}

func writeSnapshotTable(w io.Writer, snaps []smolvm.SnapshotInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tKIND\tCPUS\tMEM\tON DISK\tVMS\tCREATED")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%s\t%d\t%s\n", s.Name, s.SourceVM, snapshotKind(s), s.VCPUs, s.MemoryMiB,
			imageBytes(s.SizeBytes), len(s.Dependents), age(now.Sub(s.CreatedAt)))
	}
	return tw.Flush()
}

func newSnapshotInspectCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "inspect NAME",
		Aliases:           []string{"info"},
		Short:             "Show a snapshot: source VM, sizes, files, the VMs made from it",
		Args:              exactArgs(1, "snapshot inspect takes one snapshot name"),
		ValidArgsFunction: completeSnapshots(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := g.vms().GetSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.output(cmd.OutOrStdout(), info, func(w io.Writer) error {
				return writeSnapshotInfo(w, *info)
			})
		},
	}
}

// writeSnapshotInfo prints SnapshotInfo as aligned "Field: value" lines.
func writeSnapshotInfo(w io.Writer, s smolvm.SnapshotInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	line("Name", s.Name)
	line("Source VM", s.SourceVM)
	kind := "memory, devices and disk (VMs made from it resume)"
	if s.DiskOnly {
		kind = "disk only (VMs made from it boot)"
	}
	line("Kind", kind)
	if s.Auto {
		line("Made by", "fork (removed with its last VM)")
	}
	image := s.Image
	if image == "" {
		image = "default (alpine)"
	}
	line("Image", image)
	line("Kernel", s.Kernel)
	line("CPUs", fmt.Sprint(s.VCPUs))
	line("Memory", fmt.Sprintf("%d MiB", s.MemoryMiB))
	line("Disk", fmt.Sprintf("%d MiB", s.DiskMiB))
	line("On disk", imageBytes(s.SizeBytes))
	line("Paused", s.Paused.Round(time.Millisecond).String())
	vms := "none"
	if len(s.Dependents) > 0 {
		vms = strings.Join(s.Dependents, " ")
	}
	line("VMs", vms)
	line("Dir", s.Dir)
	line("Created", s.CreatedAt.Local().Format(time.RFC3339))
	return tw.Flush()
}

func newSnapshotRmCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "rm NAME...",
		Aliases:           []string{"remove", "delete"},
		Short:             "Remove snapshots (refused while VMs made from them exist)",
		Args:              minArgs(1, "snapshot rm takes one or more snapshot names"),
		ValidArgsFunction: completeSnapshots(g, 0),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			removed := []string{}
			var errs []error
			for _, name := range args {
				if err := g.vms().RemoveSnapshot(cmd.Context(), name); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, name)
				if !g.json {
					fmt.Fprintln(cmd.OutOrStdout(), name)
				}
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), map[string][]string{"removed": removed})
			}
			return nil
		},
	}
}

type forkOptions struct {
	count int
}

func newForkCmd(g *globalOptions) *cobra.Command {
	var o forkOptions
	cmd := &cobra.Command{
		Use:   "fork ID [-n N]",
		Short: "Make N new running VMs from a running VM's current state",
		Long: "Make N new running VMs from the running VM ID as it is now: each resumes\n" +
			"its processes and files, as a new machine (id, address, keys). ID is paused\n" +
			"only for the capture and runs on. It prints the new ids (--json: their infos).",
		Example:           "  smolvm fork web -n 3",
		Args:              exactArgs(1, "fork takes one VM id: smolvm fork ID [-n N]"),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.count < 1 {
				return usagef("-n %d: fork at least one VM", o.count)
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				infos, err := vm.Fork(cmd.Context(), o.count)
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), infos, func(w io.Writer) error {
					for _, info := range infos {
						fmt.Fprintln(w, info.ID)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().IntVarP(&o.count, "count", "n", 1, "number of VMs to make")
	return cmd
}

// fromSnapshotFlags are the VM flags a VM made from a snapshot may take:
// its machine (CPUs, memory, disk, image, mounts) is the snapshot's.
var fromSnapshotFlags = map[string]bool{"name": true, "env": true, "boot-timeout": true}

// checkFromSnapshot refuses the flags a VM made from a snapshot cannot
// honour, naming them.
func checkFromSnapshot(cmd *cobra.Command, allowed ...string) error {
	var bad []string
	cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Changed && f.Name != "from-snapshot" && !fromSnapshotFlags[f.Name] && !contains(allowed, f.Name) {
			bad = append(bad, "--"+f.Name)
		}
	})
	if len(bad) > 0 {
		return usagef("%s: a VM made from a snapshot has the snapshot's machine; with --from-snapshot give only --name, --env or --boot-timeout", strings.Join(bad, ", "))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// fromSnapshot makes a running VM from the snapshot name with the flags
// checkFromSnapshot let through.
func fromSnapshot(ctx context.Context, g *globalOptions, name string, f vmFlags) (machine, error) {
	env, err := parseEnv(f.env)
	if err != nil {
		return nil, err
	}
	return g.vms().FromSnapshot(ctx, name, snapshotVM{id: f.name, env: env, bootTimeout: f.bootTimeout})
}

// completeSnapshots completes snapshot names; max limits how many a
// command takes (0 = any number).
func completeSnapshots(g *globalOptions, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		h, ok := g.completing()
		if !ok {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		snaps, err := h.ListSnapshots(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, s := range snaps {
			out = append(out, cobra.CompletionWithDesc(s.Name, snapshotKind(s)+" snapshot of "+s.SourceVM))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s", msg)
		}
		return nil
	}
}
