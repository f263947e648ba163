package main

import (
	"context"
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

const portSpecHelp = "want [ADDR:][HOSTPORT:]GUESTPORT, such as 8080, 9000:80 or 0.0.0.0:9000:80"

// parsePort reads [ADDR:][HOSTPORT:]GUESTPORT, the spec create -p and
// port expose take, and port close takes back as port expose printed it
// (String). A missing host port means "pick a free one"; a missing
// address means 127.0.0.1.
func parsePort(s string) (portSpec, error) {
	parts := strings.Split(s, ":")
	bad := usagef("port %q: %s", s, portSpecHelp)
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

// String is the whole spec, ADDR:HOSTPORT:GUESTPORT, as parsePort reads it.
func (p portSpec) String() string {
	return fmt.Sprintf("%s:%d:%d", p.addr, p.hostPort, p.guestPort)
}

func specOf(f smolvm.PortForward) portSpec {
	return portSpec{addr: f.HostAddr, hostPort: f.HostPort, guestPort: f.GuestPort}
}

// parseClosePort reads what port close takes: a spec as port expose took
// or printed it, or a forward's host side alone as port list shows it
// (ADDR:HOSTPORT; guestPort is then 0).
func parseClosePort(s string) (portSpec, error) {
	if addr, port, ok := strings.Cut(s, ":"); ok && !strings.Contains(port, ":") {
		if _, err := netip.ParseAddr(addr); err == nil {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				return portSpec{}, usagef("port %q: host port %q: want 1-65535", s, port)
			}
			return portSpec{addr: addr, hostPort: n}, nil
		}
	}
	return parsePort(s)
}

// closePort removes the one forward p matches: by its host side, and by
// its guest port when p has one; a spec without a host port (as in
// `port expose web 80`) matches the forward to that guest port.
func closePort(ctx context.Context, vm machine, p portSpec) (portSpec, error) {
	fs, err := vm.Forwards(ctx)
	if err != nil {
		return p, err
	}
	var match []portSpec
	for _, f := range fs {
		if f.HostAddr == p.addr && (p.hostPort == 0 || f.HostPort == p.hostPort) && (p.guestPort == 0 || f.GuestPort == p.guestPort) {
			match = append(match, specOf(f))
		}
	}
	switch len(match) {
	case 0:
		return p, fmt.Errorf("vm %q: %w: no port forward matches %s (see smolvm port list %s)", vm.ID(), smolvm.ErrNotFound, p, vm.ID())
	case 1:
		return match[0], vm.Unexpose(ctx, match[0].addr, match[0].hostPort)
	}
	names := make([]string, len(match))
	for i, m := range match {
		names[i] = m.String()
	}
	return p, usagef("port %s matches %d forwards (%s): name the host port too", p, len(match), strings.Join(names, ", "))
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
			Long: "Forward a host port to a guest port. It prints the forward as\n" +
				"ADDR:HOSTPORT:GUESTPORT, which port close takes back.",
			Example: "  smolvm port expose web 80          # a free 127.0.0.1 port to guest port 80\n" +
				"  smolvm port expose web 0.0.0.0:8080:80\n" +
				"  smolvm port close web \"$(smolvm port expose web 80)\"",
			Args:              cobra.ExactArgs(2),
			ValidArgsFunction: completeIDs(g, 1),
			SilenceUsage:      true,
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := parsePort(args[1])
				if err != nil {
					return err
				}
				return withVM(cmd.Context(), g, args[0], func(vm machine) error {
					f, err := vm.Expose(cmd.Context(), p)
					if err != nil {
						return err
					}
					return g.output(cmd.OutOrStdout(), f, func(w io.Writer) error {
						_, err := fmt.Fprintln(w, specOf(f))
						return err
					})
				})
			},
		},
		&cobra.Command{
			Use:   "close ID [ADDR:][HOSTPORT:]GUESTPORT | ADDR:HOSTPORT",
			Short: "Remove a port forward",
			Long: "Remove a port forward, named by the spec port expose took or printed\n" +
				"([ADDR:][HOSTPORT:]GUESTPORT; without HOSTPORT, the forward to that guest\n" +
				"port) or by its host side as port list shows it (ADDR:HOSTPORT). ADDR\n" +
				"defaults to 127.0.0.1. In --json mode it prints the closed forward's spec.",
			Example:           "  smolvm port close web 127.0.0.1:8080:80\n  smolvm port close web 127.0.0.1:8080",
			Args:              cobra.ExactArgs(2),
			ValidArgsFunction: completeIDs(g, 1),
			SilenceUsage:      true,
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := parseClosePort(args[1])
				if err != nil {
					return err
				}
				return withVM(cmd.Context(), g, args[0], func(vm machine) error {
					closed, err := closePort(cmd.Context(), vm, p)
					if err != nil {
						return err
					}
					return g.output(cmd.OutOrStdout(), map[string]any{"closed": closed.String()}, func(io.Writer) error { return nil })
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
				return withVM(cmd.Context(), g, args[0], func(vm machine) error {
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
