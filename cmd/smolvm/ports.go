package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// portSpec is a parsed [ADDR:][HOSTPORT:]GUESTPORT.
type portSpec struct {
	addr      string
	hostPort  int
	guestPort int
}

// parsePort reads [ADDR:][HOSTPORT:]GUESTPORT. A missing host port means
// "pick a free one"; a missing address means 127.0.0.1.
func parsePort(s string) (portSpec, error) {
	parts := strings.Split(s, ":")
	bad := usagef("port %q: want [ADDR:][HOSTPORT:]GUESTPORT, such as 8080, 9000:80 or 0.0.0.0:9000:80", s)
	if len(parts) > 3 {
		return portSpec{}, bad
	}
	p := portSpec{addr: "127.0.0.1"}
	num := func(v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 {
			return 0, bad
		}
		return n, nil
	}
	var err error
	if p.guestPort, err = num(parts[len(parts)-1]); err != nil || p.guestPort == 0 {
		return portSpec{}, bad
	}
	if len(parts) >= 2 {
		if p.hostPort, err = num(parts[len(parts)-2]); err != nil {
			return portSpec{}, err
		}
	}
	if len(parts) == 3 {
		if _, err := netip.ParseAddr(parts[0]); err != nil {
			return portSpec{}, bad
		}
		p.addr = parts[0]
	}
	return p, nil
}

func newPortCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:          "port",
		Short:        "Expose guest ports on the host",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "expose ID [ADDR:][HOSTPORT:]GUESTPORT",
			Short: "Forward a host port (127.0.0.1 unless ADDR says otherwise; free one if omitted) to a guest port",
			Example: "  smolvm port expose web 80          # a free 127.0.0.1 port to guest port 80\n" +
				"  smolvm port expose web 0.0.0.0:8080:80",
			Args:              cobra.ExactArgs(2),
			ValidArgsFunction: completeIDs(g, 1),
			SilenceUsage:      true,
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := parsePort(args[1])
				if err != nil {
					return err
				}
				return withVM(cmd.Context(), g, args[0], func(vm *smolvm.VM) error {
					f, err := vm.Expose(cmd.Context(), p.guestPort, p.hostPort, smolvm.OnHostAddr(p.addr))
					if err != nil {
						return err
					}
					return g.output(cmd.OutOrStdout(), f, func(w io.Writer) error {
						_, err := fmt.Fprintf(w, "%s:%d -> %d\n", f.HostAddr, f.HostPort, f.GuestPort)
						return err
					})
				})
			},
		},
		&cobra.Command{
			Use:               "close ID [ADDR:]HOSTPORT",
			Short:             "Remove a port forward",
			Args:              cobra.ExactArgs(2),
			ValidArgsFunction: completeIDs(g, 1),
			SilenceUsage:      true,
			RunE: func(cmd *cobra.Command, args []string) error {
				addr, port := "127.0.0.1", args[1]
				if i := strings.LastIndex(port, ":"); i >= 0 {
					addr, port = port[:i], port[i+1:]
				}
				n, err := strconv.Atoi(port)
				if err != nil {
					return usagef("host port %q: want [ADDR:]HOSTPORT", args[1])
				}
				return withVM(cmd.Context(), g, args[0], func(vm *smolvm.VM) error {
					if err := vm.Unexpose(cmd.Context(), addr, n); err != nil {
						return err
					}
					return g.output(cmd.OutOrStdout(), map[string]any{"closed": fmt.Sprintf("%s:%d", addr, n)}, func(io.Writer) error { return nil })
				})
			},
		},
		&cobra.Command{
			Use:               "list ID",
			Short:             "List a VM's port forwards",
			Args:              cobra.ExactArgs(1),
			ValidArgsFunction: completeIDs(g, 1),
			SilenceUsage:      true,
			RunE: func(cmd *cobra.Command, args []string) error {
				return withVM(cmd.Context(), g, args[0], func(vm *smolvm.VM) error {
					fs, err := vm.Forwards(cmd.Context())
					if err != nil {
						return err
					}
					if fs == nil {
						fs = []smolvm.PortForward{}
					}
					return g.output(cmd.OutOrStdout(), fs, func(w io.Writer) error {
						tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "HOST\tGUEST PORT")
						for _, f := range fs {
							fmt.Fprintf(tw, "%s:%d\t%d\n", f.HostAddr, f.HostPort, f.GuestPort)
						}
						return tw.Flush()
					})
				})
			},
		},
	)
	return cmd
}
