package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/smolvm/smolvm"
)

// limitFlags are the limits create, run and update take.
type limitFlags struct {
	cpu      float64
	memory   int
	diskBPS  int64
	diskIOPS int64
	netBPS   int64
}

const rateHelp = "bytes per second: a number with an optional suffix k, M, G (x1000) or Ki, Mi, Gi (x1024), such as 10M; 0 = no limit"

func (f *limitFlags) register(fs *pflag.FlagSet) {
	fs.Float64Var(&f.cpu, "cpu-limit", 0, "CPU quota in host CPUs, such as 0.5 for half of one, at most --cpus (0 = no limit; needs root)")
	fs.IntVar(&f.memory, "memory-limit", 0, fmt.Sprintf("memory ceiling of the VM's QEMU process in MiB: the guest's memory plus at least %d for QEMU (0 = no limit; needs root)", smolvm.MemoryLimitMarginMiB))
	fs.Var(rateFlag{&f.diskBPS}, "disk-bps", "root disk bandwidth, reads and writes together, in "+rateHelp)
	fs.Var(rateFlag{&f.diskIOPS}, "disk-iops", "root disk operations per second, reads and writes together (0 = no limit)")
	fs.Var(rateFlag{&f.netBPS}, "net-bps", "network bandwidth each way, in "+rateHelp+" (TAP networking only)")
}

func (f *limitFlags) limits() smolvm.Limits {
	return smolvm.Limits{CPU: f.cpu, MemoryMiB: f.memory, DiskBPS: f.diskBPS, DiskIOPS: f.diskIOPS, NetBPS: f.netBPS}
}

// over returns cur with the limits whose flags were given replaced.
func (f *limitFlags) over(cur smolvm.Limits, fs *pflag.FlagSet) smolvm.Limits {
	set := f.limits()
	for name, apply := range map[string]func(){
		"cpu-limit":    func() { cur.CPU = set.CPU },
		"memory-limit": func() { cur.MemoryMiB = set.MemoryMiB },
		"disk-bps":     func() { cur.DiskBPS = set.DiskBPS },
		"disk-iops":    func() { cur.DiskIOPS = set.DiskIOPS },
		"net-bps":      func() { cur.NetBPS = set.NetBPS },
	} {
		if fs.Changed(name) {
			apply()
		}
	}
	return cur
}

// rateFlag is an int64 flag that takes smolvm.ParseRate's suffixes.
type rateFlag struct{ n *int64 }

func (r rateFlag) Set(s string) error {
	n, err := smolvm.ParseRate(s)
	if err != nil {
		return err
	}
	*r.n = n
	return nil
}

func (r rateFlag) String() string {
	if r.n == nil {
		return "0"
	}
	return strconv.FormatInt(*r.n, 10)
}

func (r rateFlag) Type() string { return "rate" }

func newUpdateCmd(g *globalOptions) *cobra.Command {
	var f limitFlags
	cmd := &cobra.Command{
		Use:   "update ID [flags]",
		Short: "Change a VM's limits, also while it runs",
		Long: "Change a VM's CPU, memory, disk and network limits. Only the limits given\n" +
			"change; 0 lifts one. A running VM is held to the new limits at once, and\n" +
			"they are kept for every later start (smolvm info shows config.limits).\n" +
			"\"smolvm limits set\" is the same command.",
		Example: "  smolvm update web --cpu-limit 0.5 --disk-bps 10M\n" +
			"  smolvm update web --net-bps 0",
		Args:              exactID("update"),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				l := f.over(vm.Info().Config.Limits, cmd.Flags())
				if err := vm.SetLimits(cmd.Context(), l); err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), l, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, formatLimits(l))
					return err
				})
			})
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// newLimitsCmd is "limits set ID ...", the same as update.
func newLimitsCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:          "limits",
		Short:        "Change a VM's limits (limits set ID = update ID)",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	set := newUpdateCmd(g)
	set.Use, set.Short = "set ID [flags]", "Change a VM's limits, also while it runs"
	cmd.AddCommand(set)
	return cmd
}

func exactID(verb string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("need one VM id: smolvm %s ID [flags]", verb)
		}
		return nil
	}
}

func formatLimits(l smolvm.Limits) string {
	if l.IsZero() {
		return "no limits"
	}
	var parts []string
	if l.CPU != 0 {
		parts = append(parts, fmt.Sprintf("cpu %g", l.CPU))
	}
	if l.MemoryMiB != 0 {
		parts = append(parts, fmt.Sprintf("memory %d MiB", l.MemoryMiB))
	}
	if l.DiskBPS != 0 {
		parts = append(parts, "disk "+formatRate(l.DiskBPS)+"/s")
	}
	if l.DiskIOPS != 0 {
		parts = append(parts, fmt.Sprintf("disk %d IOPS", l.DiskIOPS))
	}
	if l.NetBPS != 0 {
		parts = append(parts, "net "+formatRate(l.NetBPS)+"/s")
	}
	return strings.Join(parts, ", ")
}

// formatRate writes a rate as the flags take it: 5M, 1Mi, 1500.
func formatRate(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// statsInterval is how often stats refreshes, and the window of the CPU
// figure of a single sample.
const statsInterval = time.Second

type statsOptions struct {
	noStream bool
}

func newStatsCmd(g *globalOptions) *cobra.Command {
	var o statsOptions
	cmd := &cobra.Command{
		Use:   "stats [ID...]",
		Short: "Show VMs' CPU, memory, disk and network use",
		Long: "Show the running VMs' use of the host (all of them when no id is given),\n" +
			"like docker stats: refreshed every second on a terminal until Ctrl-C;\n" +
			"one sample with --no-stream, when stdout is no terminal, and with --json\n" +
			"(an array of samples). CPU is in host CPUs over the last second (100% is\n" +
			"one CPU); MEM is QEMU's resident memory on the host; GUEST MEM is what\n" +
			"the guest says it uses (its own /proc/meminfo).",
		Example:           "  smolvm stats\n  smolvm stats web --no-stream\n  smolvm stats --json web",
		ValidArgsFunction: completeIDs(g, 0),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStats(cmd.Context(), g, o, args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.noStream, "no-stream", false, "print one sample and exit")
	return cmd
}

func runStats(ctx context.Context, g *globalOptions, o statsOptions, ids []string, w io.Writer) error {
	explicit := len(ids) > 0
	if !explicit {
		infos, err := g.vms().List(ctx)
		if err != nil {
			return err
		}
		for _, info := range infos {
			if info.State == smolvm.StateRunning || info.State == smolvm.StatePaused {
				ids = append(ids, info.ID)
			}
		}
	}
	var vms []machine
	defer func() {
		for _, vm := range vms {
			vm.Close()
		}
	}()
	for _, id := range ids {
		vm, err := g.vms().Open(ctx, id)
		if err != nil {
			return err
		}
		vms = append(vms, vm)
	}
	// The first sample of a handle averages since the VM started; the
	// second, a moment later, is what the VM does now.
	if _, err := sample(ctx, vms, explicit); err != nil {
		return err
	}
	live := !o.noStream && !g.json && isTerminal(w)
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		ms, err := sample(ctx, vms, explicit)
		if err != nil {
			return err
		}
		if !live {
			return g.output(w, ms, func(w io.Writer) error { return statsTable(w, ms) })
		}
		fmt.Fprint(w, "\x1b[H\x1b[2J") // home, clear: the table redraws in place
		if err := statsTable(w, ms); err != nil {
			return err
		}
	}
}

// sample takes one Metrics of each VM at once. A VM that stopped is
// left out, unless it was asked for by id.
func sample(ctx context.Context, vms []machine, strict bool) ([]*smolvm.Metrics, error) {
	out := make([]*smolvm.Metrics, len(vms))
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Go(func() { out[i], errs[i] = vm.Metrics(ctx) })
	}
	wg.Wait()
	ms := make([]*smolvm.Metrics, 0, len(vms))
	for i, m := range out {
		if errs[i] != nil {
			if strict {
				return nil, errs[i]
			}
			continue
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func statsTable(w io.Writer, ms []*smolvm.Metrics) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCPU %\tMEM / LIMIT\tGUEST MEM\tDISK READ / WRITE\tNET RX / TX")
	for _, m := range ms {
		limit := "-"
		if m.Limits.MemoryMiB != 0 {
			limit = humanBytes(int64(m.Limits.MemoryMiB) << 20)
		}
		guest := "?"
		if m.Guest != nil {
			guest = humanBytes(m.Guest.MemTotal-m.Guest.MemAvailable) + " / " + humanBytes(m.Guest.MemTotal)
		}
		net := "-"
		if m.Net != nil {
			net = humanBytes(int64(m.Net.RxBytes)) + " / " + humanBytes(int64(m.Net.TxBytes))
		}
		fmt.Fprintf(tw, "%s\t%.1f%%\t%s / %s\t%s\t%s / %s\t%s\n", m.ID, m.CPU.Usage*100,
			humanBytes(m.Memory.RSS), limit, guest, humanBytes(m.Disk.ReadBytes), humanBytes(m.Disk.WriteBytes), net)
	}
	return tw.Flush()
}

// humanBytes is n in binary units, as stats shows sizes.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
