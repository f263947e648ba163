package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// lifeFlags are create's lifetime and label flags.
type lifeFlags struct {
	ttl      time.Duration
	onExpire string
	labels   []string
}

func (f *lifeFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.Var(secondsFlag(&f.ttl), "ttl", "end the VM this long after its create (10m, 2h; seconds if a plain number), even when this command has exited; see --on-expire (0 = never)")
	fs.StringVar(&f.onExpire, "on-expire", "", "what ends the VM when its --ttl is over: stop (default), hibernate or delete")
	fs.StringArrayVar(&f.labels, "label", nil, "tag the VM, KEY=VALUE (repeatable; list --filter label=KEY=VALUE finds it)")
	cmd.RegisterFlagCompletionFunc("on-expire", cobra.FixedCompletions(
		[]string{smolvm.ExpireStop, smolvm.ExpireHibernate, smolvm.ExpireDelete}, cobra.ShellCompDirectiveNoFileComp))
}

// apply puts the flags into cfg.
func (f *lifeFlags) apply(cfg *smolvm.VMConfig) error {
	cfg.TTL, cfg.OnExpire = f.ttl, f.onExpire
	if len(f.labels) == 0 {
		return nil
	}
	cfg.Labels = map[string]string{}
	for _, l := range f.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usagef("--label %q: want KEY=VALUE", l)
		}
		cfg.Labels[k] = v
	}
	return smolvm.ValidateLabels(cfg.Labels)
}

// parseListFilter turns list's --filter values into label selectors:
// label=KEY or label=KEY=VALUE.
func parseListFilter(filters []string) ([]string, error) {
	var sels []string
	for _, f := range filters {
		sel, ok := strings.CutPrefix(f, "label=")
		if !ok || sel == "" {
			return nil, usagef("--filter %q: want label=KEY or label=KEY=VALUE", f)
		}
		sels = append(sels, sel)
	}
	return sels, nil
}

func (h localHost) ListLabeled(ctx context.Context, selectors []string) ([]smolvm.VMInfo, error) {
	return smolvm.List(ctx, h.g.sdk(smolvm.WithLabelFilter(selectors...))...)
}

func (h remoteHost) ListLabeled(ctx context.Context, selectors []string) ([]smolvm.VMInfo, error) {
	vms, err := h.c().ListVMs(ctx, "", "", selectors...)
	if vms == nil && err == nil {
		vms = []smolvm.VMInfo{}
	}
	return vms, err
}

func (v *remoteVM) SetTTL(ctx context.Context, ttl time.Duration, onExpire string) error {
	return v.update(v.c.SetTTL(ctx, v.info.ID, ttl, onExpire))
}

func newTTLCmd(g *globalOptions) *cobra.Command {
	var onExpire string
	cmd := &cobra.Command{
		Use:   "ttl ID DURATION",
		Short: "Give a VM a new lifetime, counted from now",
		Long: "Give a VM a new lifetime, DURATION from now (10m, 2h; seconds if a plain number;\n" +
			"0 or none: no end). When it is over the VM is stopped, hibernated or deleted as\n" +
			"--on-expire says (default: as it was given at create, else stop). A VM whose\n" +
			"lifetime ended starts again only once it has a new one.",
		Example:           "  smolvm ttl web 30m\n  smolvm ttl web none\n  smolvm ttl web 1h --on-expire delete",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ttl time.Duration
			if args[1] != "none" {
				d, err := parseSeconds(args[1])
				if err != nil {
					return usagef("duration %q: %v (or none)", args[1], err)
				}
				ttl = d
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if err := vm.SetTTL(cmd.Context(), ttl, onExpire); err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), vm.Info(), func(w io.Writer) error {
					_, err := fmt.Fprintln(w, expiry(vm.Info().Config, time.Now()))
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&onExpire, "on-expire", "", "what ends the VM: stop, hibernate or delete (default: unchanged)")
	return cmd
}

// expiry says when a VM's lifetime ends: "-" for never, "in 5m (stop)",
// "over (stop)".
func expiry(c smolvm.VMConfig, now time.Time) string {
	if c.ExpiresAt.IsZero() {
		return "-"
	}
	action := c.OnExpire
	if action == "" {
		action = smolvm.ExpireStop
	}
	d := c.ExpiresAt.Sub(now)
	if d <= 0 {
		return "over (" + action + ")"
	}
	return "in " + d.Round(time.Second).String() + " (" + action + ")"
}

// labelsText is labels as K=V, sorted.
func labelsText(labels map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, k+"="+labels[k])
	}
	return strings.Join(out, " ")
}
