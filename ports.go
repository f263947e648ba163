package smolvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// PortForward makes a guest TCP port reachable on the host.
type PortForward struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// ExposeOption adjusts Expose.
type ExposeOption func(*PortForward)

// OnHostAddr binds an exposed port to addr instead of 127.0.0.1, such as
// "0.0.0.0" to accept connections from other machines.
func OnHostAddr(addr string) ExposeOption { return func(f *PortForward) { f.HostAddr = addr } }

// Expose forwards hostPort on the host (127.0.0.1 unless OnHostAddr says
// otherwise; 0 = pick a free port) to guestPort in the VM, and returns the
// forward made. Forwards are kept across stop and start and removed on
// delete. As root they are nftables DNAT rules (which also work from the
// host itself); without root, QEMU user-mode forwards.
func (v *VM) Expose(ctx context.Context, guestPort, hostPort int, opts ...ExposeOption) (PortForward, error) {
	f := PortForward{HostAddr: "127.0.0.1", HostPort: hostPort, GuestPort: guestPort}
	for _, o := range opts {
		o(&f)
	}
	f, err := v.expose(ctx, f)
	return f, opError("expose", v.id, err)
}

func (v *VM) expose(ctx context.Context, f PortForward) (PortForward, error) {
	addr, err := netip.ParseAddr(f.HostAddr)
	if err != nil || !addr.Is4() {
		return f, &ValidationError{Field: "host address", Value: f.HostAddr, Reason: "want an IPv4 address such as 127.0.0.1 or 0.0.0.0"}
	}
	if err := checkHostAddr(addr); err != nil {
		return f, err
	}
	f.HostAddr = addr.String()
	if f.GuestPort < 1 || f.GuestPort > 65535 {
		return f, &ValidationError{Field: "guest port", Value: f.GuestPort, Reason: "must be 1-65535"}
	}
	if f.HostPort < 0 || f.HostPort > 65535 {
		return f, &ValidationError{Field: "host port", Value: f.HostPort, Reason: "must be 1-65535, or 0 for a free one"}
	}
	if err := v.Refresh(ctx); err != nil {
		return f, err
	}
	if f.HostPort == 0 {
		if f.HostPort, err = network.FreePort(f.HostAddr); err != nil {
			return f, fmt.Errorf("pick a free port on %s: %w", f.HostAddr, err)
		}
	}
	row := store.Forward{VMID: v.id, HostAddr: f.HostAddr, HostPort: f.HostPort, GuestPort: f.GuestPort}
	if err := v.st.AddForward(ctx, row); err != nil {
		if errors.Is(err, store.ErrExists) {
			return f, fmt.Errorf("%w: host port %s:%d is already forwarded", ErrAlreadyExists, f.HostAddr, f.HostPort)
		}
		return f, err
	}
	// After the store: a port already forwarded is reported as that.
	if err := checkHostPort(f.HostAddr, f.HostPort); err != nil {
		v.st.RemoveForward(context.WithoutCancel(ctx), v.id, f.HostAddr, f.HostPort)
		return f, err
	}
	if v.Status() == StateRunning {
		if err := v.applyForward(ctx, f); err != nil {
			v.st.RemoveForward(context.WithoutCancel(ctx), v.id, f.HostAddr, f.HostPort)
			return f, err
		}
	}
	v.log().Info("exposed", "host", fmt.Sprintf("%s:%d", f.HostAddr, f.HostPort), "guest_port", f.GuestPort)
	return f, nil
}

// Unexpose removes the forward of hostAddr:hostPort ("" = 127.0.0.1).
func (v *VM) Unexpose(ctx context.Context, hostAddr string, hostPort int) error {
	if hostAddr == "" {
		hostAddr = "127.0.0.1"
	}
	if err := v.exists(ctx); err != nil {
		return opError("unexpose", v.id, err)
	}
	err := v.st.RemoveForward(ctx, v.id, hostAddr, hostPort)
	if errors.Is(err, store.ErrNotFound) {
		return opError("unexpose", v.id, fmt.Errorf("%w: no forward of %s:%d", ErrNotFound, hostAddr, hostPort))
	}
	if err != nil {
		return opError("unexpose", v.id, err)
	}
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	if v.Status() == StateRunning {
		return opError("unexpose", v.id, v.removeForward(ctx, hostAddr, hostPort))
	}
	return nil
}

// Forwards lists the VM's port forwards.
func (v *VM) Forwards(ctx context.Context) ([]PortForward, error) {
	if err := v.exists(ctx); err != nil {
		return nil, opError("forwards", v.id, err)
	}
	rows, err := v.st.Forwards(ctx, v.id)
	if err != nil {
		return nil, opError("forwards", v.id, err)
	}
	out := make([]PortForward, 0, len(rows))
	for _, r := range rows {
		out = append(out, PortForward{HostAddr: r.HostAddr, HostPort: r.HostPort, GuestPort: r.GuestPort})
	}
	return out, nil
}

// applyForward installs one forward on the running VM.
func (v *VM) applyForward(ctx context.Context, f PortForward) error {
	n := v.Info().Network
	if n.Mode == NetworkTAP {
		return firewallAddForward(v.Info().Process, n, f)
	}
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	return q.AddHostForward(qemu.HostForward{HostAddr: f.HostAddr, HostPort: f.HostPort, GuestPort: f.GuestPort})
}

func (v *VM) removeForward(ctx context.Context, hostAddr string, hostPort int) error {
	n := v.Info().Network
	if n.Mode == NetworkTAP {
		return firewallRemoveForward(v.Info().Process, hostAddr, hostPort)
	}
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	return q.RemoveHostForward(hostAddr, hostPort)
}

// checkHostAddr accepts the host addresses a forward can listen on: the
// unspecified address, loopback, or an address of one of this host's
// interfaces. Forwarding a remote address would make the host answer for
// another machine.
func checkHostAddr(addr netip.Addr) error {
	if addr.IsUnspecified() || addr.IsLoopback() {
		return nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap() == addr {
				return nil
			}
		}
	}
	return &ValidationError{Field: "host address", Value: addr.String(),
		Reason: "not an address of this host: use 127.0.0.1 (this host only), 0.0.0.0 (every address) or one of its interfaces' addresses (ip -4 addr)"}
}

// checkHostPort makes sure nothing on the host listens on addr:port over
// TCP, by binding it for a moment: a DNAT forward runs before the local
// socket and would silently take that program's connections. A forward's
// own DNAT rule holds no socket, so it does not count. A program that
// starts listening after the check is not seen; the next start checks
// again.
func checkHostPort(addr string, port int) error {
	ln, err := net.Listen("tcp4", net.JoinHostPort(addr, strconv.Itoa(port)))
	if err == nil {
		return ln.Close()
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w: host port in use: a program on this host already listens on %s:%d (see ss -ltnp 'sport = :%d'); stop it, or forward another host port (0 picks a free one)", ErrAlreadyExists, addr, port, port)
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return &ValidationError{Field: "host address", Value: addr, Reason: "this host has no such address (any more): forward 127.0.0.1, 0.0.0.0 or an address of one of its interfaces"}
	}
	return fmt.Errorf("check host port %s:%d: %w", addr, port, err)
}
