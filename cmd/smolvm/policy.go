package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// egressFlags are the policy flags create, run and policy set share.
type egressFlags struct {
	allowDomains []string
	allowCIDRs   []string
	denyCIDRs    []string
}

func (f *egressFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringArrayVar(&f.allowDomains, "allow-domain", nil, "let the VM resolve and reach NAME, or every name below example.org with *.example.org (not the apex); then only what is allowed is reachable (repeatable)")
	fs.StringArrayVar(&f.allowCIDRs, "allow-cidr", nil, "let the VM reach an IPv4 network or address, private ones included; then only what is allowed is reachable (repeatable)")
	fs.StringArrayVar(&f.denyCIDRs, "deny-cidr", nil, "never let the VM reach an IPv4 network, even when allowed (repeatable)")
}

func (f *egressFlags) policy(noEgress bool) smolvm.EgressPolicy {
	return smolvm.EgressPolicy{NoEgress: noEgress, AllowDomains: f.allowDomains, AllowCIDRs: f.allowCIDRs, DenyCIDRs: f.denyCIDRs}
}

func newPolicyCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show or change a VM's egress policy",
		Long: "A VM's egress policy says where it may connect. By default: public\n" +
			"addresses only (no private, link-local or other special ranges, never the\n" +
			"host's services or other VMs). --allow-domain and --allow-cidr let it reach\n" +
			"only what they name; --deny-cidr wins over both; --no-egress cuts it off.\n" +
			"Domains work through smolvm's resolver on the VM's gateway (TAP\n" +
			"networking). A user-mode VM has no route out: it reaches the network only\n" +
			"through smolvm's HTTP proxy (the guest's http_proxy and https_proxy),\n" +
			"which enforces the same policy.",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	cmd.AddCommand(newPolicySetCmd(g), newPolicyShowCmd(g))
	return cmd
}

func newPolicySetCmd(g *globalOptions) *cobra.Command {
	var (
		f          egressFlags
		noEgress   bool
		add, clear bool
	)
	cmd := &cobra.Command{
		Use:   "set ID [--allow-domain NAME]... [--allow-cidr CIDR]... [--deny-cidr CIDR]... [--no-egress]",
		Short: "Replace a VM's egress policy (at once, if it runs)",
		Long: "Replace the VM's egress policy with the one the flags give (--add: add\n" +
			"them to the current one instead; --clear with no other flag: back to the\n" +
			"default). A running VM applies it at once to new connections; open ones\n" +
			"stay open. It holds across restarts, snapshots and forks.",
		Example: "  smolvm policy set web --allow-domain api.example.org --allow-domain '*.pypi.org'\n" +
			"  smolvm policy set web --add --allow-cidr 10.0.5.0/24\n" +
			"  smolvm policy set web --no-egress\n" +
			"  smolvm policy set web --clear",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			p := f.policy(noEgress)
			empty := !noEgress && len(f.allowDomains)+len(f.allowCIDRs)+len(f.denyCIDRs) == 0
			switch {
			case clear && !empty:
				return usagef("--clear takes no other policy flag")
			case clear && add:
				return usagef("--clear and --add: pick one")
			case empty && !clear:
				return usagef("give the new policy (--allow-domain, --allow-cidr, --deny-cidr, --no-egress), or --clear for the default")
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if add {
					cur := vm.Info().EgressStatus().Policy
					p = smolvm.EgressPolicy{
						NoEgress:     cur.NoEgress || noEgress,
						AllowDomains: append(slices.Clone(cur.AllowDomains), f.allowDomains...),
						AllowCIDRs:   append(slices.Clone(cur.AllowCIDRs), f.allowCIDRs...),
						DenyCIDRs:    append(slices.Clone(cur.DenyCIDRs), f.denyCIDRs...),
					}
				}
				if err := vm.SetEgressPolicy(cmd.Context(), p); err != nil {
					return err
				}
				return printPolicy(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&noEgress, "no-egress", false, "cut the VM off: no connection out, no name resolves (exposed ports still work)")
	cmd.Flags().BoolVar(&add, "add", false, "add the flags' entries to the current policy instead of replacing it")
	cmd.Flags().BoolVar(&clear, "clear", false, "back to the default policy: public addresses only")
	return cmd
}

func newPolicyShowCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "show ID",
		Short:             "Show a VM's egress policy",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				return printPolicy(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
}

func printPolicy(g *globalOptions, w io.Writer, info smolvm.VMInfo) error {
	st := info.EgressStatus()
	return g.output(w, st, func(w io.Writer) error {
		fmt.Fprintf(w, "Egress: %s\n", st.Summary)
		p := st.Policy
		for _, l := range []struct {
			k string
			v []string
		}{{"Allow domains", p.AllowDomains}, {"Allow CIDRs", p.AllowCIDRs}, {"Deny CIDRs", p.DenyCIDRs}} {
			if len(l.v) > 0 {
				fmt.Fprintf(w, "%s: %s\n", l.k, strings.Join(l.v, " "))
			}
		}
		if st.DNSUpstream != "" {
			fmt.Fprintf(w, "DNS upstream: %s\n", st.DNSUpstream)
		}
		return nil
	})
}
