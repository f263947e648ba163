package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

func newListCmd(g *globalOptions) *cobra.Command {
	var filters []string
	cmd := &cobra.Command{
		Use:          "list",
		Aliases:      []string{"ls"}, // ps: proc.go
		Short:        "List VMs",
		Example:      "  smolvm list --filter label=team=ml --filter label=gpu",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sels, err := parseListFilter(filters)
			if err != nil {
				return err
			}
			vms, err := g.vms().ListLabeled(cmd.Context(), sels)
			if err != nil {
				return err
			}
			return g.output(cmd.OutOrStdout(), vms, func(w io.Writer) error {
				return writeTable(w, vms, time.Now())
			})
		},
	}
	cmd.Flags().StringArrayVar(&filters, "filter", nil, "only VMs with label=KEY or label=KEY=VALUE (repeatable: all must match)")
	return cmd
}

// writeTable prints VMs as a table, ages relative to now.
func writeTable(w io.Writer, vms []smolvm.VMInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	// The lifetime column only when some VM has one.
	lives := slices.ContainsFunc(vms, func(vm smolvm.VMInfo) bool { return !vm.Config.ExpiresAt.IsZero() })
	head, tail := "", "\n"
	if lives {
		head, tail = "\tEXPIRES", "\t%s\n"
	}
	fmt.Fprintln(tw, "ID\tSTATE\tIP\tCPUS\tMEM\tDISK\tCREATED"+head)
	for _, vm := range vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%dM\t%s", vm.ID, vm.State, hostIP(vm),
			vm.Config.VCPUs, vm.Config.MemoryMiB, vm.Config.DiskMiB, age(now.Sub(vm.CreatedAt)))
		if lives {
			fmt.Fprintf(tw, tail, expiry(vm.Config, now))
		} else {
			fmt.Fprint(tw, tail)
		}
	}
	return tw.Flush()
}

// hostIP is the address the host reaches the guest at, as VM.IP says:
// the guest's own with TAP networking, 127.0.0.1 with user networking.
func hostIP(vm smolvm.VMInfo) string {
	if vm.Network.Mode == smolvm.NetworkUser {
		return "127.0.0.1"
	}
	if vm.Network.GuestIP == "" {
		return "-"
	}
	addr, _, _ := strings.Cut(vm.Network.GuestIP, "/")
	return addr
}

// age says how long ago something happened, roughly: "5s ago", "3m ago".
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func newInfoCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "info ID",
		Aliases:           []string{"inspect"},
		Short:             "Show a VM's settings and state",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				info := vm.Info()
				return g.output(cmd.OutOrStdout(), info, func(w io.Writer) error {
					return writeInfo(w, info)
				})
			})
		},
	}
}

// writeInfo prints VMInfo as aligned "Field: value" lines.
func writeInfo(w io.Writer, vm smolvm.VMInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	line("ID", vm.ID)
	line("State", string(vm.State))
	line("Error", vm.Error)
	line("Backend", vm.Backend)
	if vm.PID != 0 {
		line("PID", fmt.Sprint(vm.PID))
	}
	line("CPUs", fmt.Sprint(vm.Config.VCPUs))
	line("Memory", fmt.Sprintf("%d MiB", vm.Config.MemoryMiB))
	line("Disk", fmt.Sprintf("%d MiB, %s", vm.Config.DiskMiB, vm.Disk))
	if !vm.Config.Limits.IsZero() {
		line("Limits", formatLimits(vm.Config.Limits))
	}
	image := vm.Config.Image
	if image == "" && vm.Config.RootfsPath != "" {
		image = vm.Config.RootfsPath
	} else if image == "" {
		image = "default (alpine)"
	}
	line("Image", image)
	line("Kernel", vm.Kernel)
	line("From snapshot", vm.FromSnapshot)
	line("Boot path", vm.BootPath)
	n := vm.Network
	line("Network", n.Mode)
	line("TAP", n.TAP)
	line("Host IP", n.HostIP)
	line("Guest IP", n.GuestIP)
	line("Gateway", n.Gateway)
	line("SSH", n.SSHAddr)
	line("Note", n.Note)
	line("Egress", vm.EgressStatus().Summary)
	if len(vm.Config.Env) > 0 {
		var env []string
		for _, k := range slices.Sorted(maps.Keys(vm.Config.Env)) {
			env = append(env, k+"="+vm.Config.Env[k])
		}
		line("Env", strings.Join(env, " "))
	}
	if vm.Config.RetainDiskOnDelete {
		line("Retain disk", "yes")
	}
	line("Labels", labelsText(vm.Config.Labels))
	if !vm.Config.ExpiresAt.IsZero() {
		line("Expires", vm.Config.ExpiresAt.Local().Format(time.RFC3339)+", "+expiry(vm.Config, time.Now()))
	}
	line("Data dir", vm.DataDir)
	line("Console log", vm.ConsoleLog)
	line("Created", vm.CreatedAt.Local().Format(time.RFC3339))
	if !vm.StartedAt.IsZero() {
		line("Started", vm.StartedAt.Local().Format(time.RFC3339))
	}
	return tw.Flush()
}
