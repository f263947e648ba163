package smolvm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

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
