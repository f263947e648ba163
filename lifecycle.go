package smolvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// DefaultStopTimeout is how long Stop waits for a clean shutdown.
const DefaultStopTimeout = 3 * time.Second

func newBackend() (hypervisor.Backend, error) { return qemu.New() }

// Start boots the VM and returns once a command can run in it, with the
// VM's env vars in place. It is bounded by the config's BootTimeout and by
// ctx; on failure or timeout (a *TimeoutError, with the console's tail)
// the VM process and its TAP device are gone again. Starting a running VM
// is a no-op.
func (v *VM) Start(ctx context.Context) error {
	unlock, err := v.lock(ctx)
	if err != nil {
		return opError("start", v.id, err)
	}
	defer unlock()
	return opError("start", v.id, v.start(ctx))
}

// lock serializes lifecycle changes of this VM across processes: two
// starts at once must not boot two QEMUs on one disk.
func (v *VM) lock(ctx context.Context) (func(), error) {
	unlock, err := flock.Lock(ctx, filepath.Join(v.paths.dir, ".lock"), 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (its directory %s is gone)", ErrNotFound, v.paths.dir)
	}
	return unlock, err
}

func (v *VM) start(ctx context.Context) (err error) {
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	info := v.Info()
	switch info.State {
	case StateRunning:
		_, err := v.conn(ctx)
		return err
	case StatePaused:
		return v.setPaused(ctx, false)
	}
	backend, err := newBackend()
	if err != nil {
		return err
	}
	timeout := info.Config.BootTimeout
	bootCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(v.log())
			msg := err.Error()
			v.update(context.WithoutCancel(ctx), func(row *store.VM, rt *runtimeRecord) error {
				row.State, row.PID, rt.Error = string(StateError), 0, "start failed: "+msg
				return nil
			})
		}
	}()
	began := time.Now()
	rt := v.runtime()
	net := rt.Network
	name := info.Process
	spec := hypervisor.Spec{
		ID: v.id, Name: name, VCPUs: info.Config.VCPUs, MemoryMiB: info.Config.MemoryMiB,
		Kernel: rt.Kernel, Initrd: rt.Initrd, Disk: v.paths.disk(),
		ConsoleLog: v.paths.console(), PIDFile: v.paths.pidFile(), ControlSocket: v.paths.qmp(),
		Cmdline: rt.BootArgs + " " + guestCmdline(v.id, net, info.Config.Mounts),
		Net:     hypervisor.NetSpec{TAP: net.TAP, MAC: network.MAC(v.id), Restrict: info.Config.NoEgress},
	}
	for i, m := range info.Config.Mounts {
		spec.Mounts = append(spec.Mounts, hypervisor.Mount{Tag: mountTag(i), HostPath: m.HostPath, ReadOnly: !m.Writable})
	}
	forwards, err := v.Forwards(ctx)
	if err != nil {
		return err
	}
	if net.Mode == NetworkTAP {
		host, err := netip.ParsePrefix(net.HostIP)
		if err != nil {
			return fmt.Errorf("stored host address: %w", err)
		}
		if !network.TAPExists(net.TAP) && network.AddrInUse(host.Masked()) {
			return fmt.Errorf("address %s of this VM is in use on the host by another interface (a VM of another smolvm state directory?): stop that, or create this VM again to get a free address, or set SMOLVM_SUBNET", net.HostIP)
		}
		if err := network.CreateTAP(network.TAP{Name: net.TAP, Host: host, Alias: network.AliasPrefix + v.paths.dir}); err != nil {
			return err
		}
		undo.push("tap", func() error { return network.DeleteTAP(net.TAP) })
		if err := firewallAddVM(name, net, info.Config.NoEgress, forwards); err != nil {
			return err
		}
		undo.push("firewall", func() error { return firewallRemoveVM(name) })
	} else {
		port, err := network.FreePort("127.0.0.1")
		if err != nil {
			return err
		}
		net.SSHAddr = fmt.Sprintf("127.0.0.1:%d", port)
		spec.Net.Forwards = []hypervisor.Forward{{HostAddr: "127.0.0.1", HostPort: port, GuestPort: 22}}
		for _, f := range forwards {
			spec.Net.Forwards = append(spec.Net.Forwards, hypervisor.Forward{HostAddr: f.HostAddr, HostPort: f.HostPort, GuestPort: f.GuestPort})
		}
	}
	os.Remove(v.paths.console())
	os.Remove(v.paths.pidFile())
	os.Remove(v.paths.qmp())
	pid, err := backend.Start(bootCtx, spec)
	if err != nil {
		return err
	}
	undo.push("vm process", func() error { return hypervisor.Kill(context.Background(), pid, name) })
	if err := v.update(ctx, func(row *store.VM, r *runtimeRecord) error {
		row.State, row.PID = string(StateRunning), pid
		r.Network, r.Backend, r.StartedAt, r.Error = net, backend.Name(), time.Now().UTC(), ""
		return nil
	}); err != nil {
		return err
	}
	v.log().Debug("start: process up", "pid", pid, "after", time.Since(began))

	if err := v.waitReady(bootCtx, pid, name, timeout); err != nil {
		return err
	}
	v.log().Info("started", "pid", pid, "ip", net.GuestIP, "boot", time.Since(began).Round(time.Millisecond))
	if err := v.writeKnownHosts(); err != nil {
		return err
	}
	return nil
}

// waitReady connects to the guest's SSH server, giving up when the VM
// process dies (with the console tail, which says why) or ctx ends.
func (v *VM) waitReady(ctx context.Context, pid int, name string, timeout time.Duration) error {
	dialCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errDied := errors.New("VM process exited during boot")
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-dialCtx.Done():
				return
			case <-t.C:
				if !hypervisor.Alive(pid, name) {
					cancel(errDied)
					return
				}
			}
		}
	}()
	_, err := v.conn(dialCtx)
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(context.Cause(dialCtx), errDied):
		return fmt.Errorf("%w; %s", errDied, v.consoleTail())
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &TimeoutError{Op: "start", VM: v.id, Timeout: timeout, Detail: "guest SSH server not ready; " + v.consoleTail()}
	case ctx.Err() != nil:
		return fmt.Errorf("waiting for the guest: %w", ctx.Err())
	}
	return err
}

// conn returns the SSH connection to the guest, dialing if needed.
func (v *VM) conn(ctx context.Context) (*guest.Client, error) {
	v.mu.Lock()
	c := v.client
	if c != nil && c.Err() != nil { // ended (guest restarted, or stopped answering)
		v.dropClient()
		c = nil
	}
	info := v.info
	v.mu.Unlock()
	if (info.State == StateRunning || info.State == StatePaused) && !hypervisor.Alive(info.PID, info.Process) {
		// Fail fast rather than dial (or use a connection to) a VM that is
		// gone; another process may have restarted it meanwhile.
		v.mu.Lock()
		v.dropClient()
		v.mu.Unlock()
		if err := v.Refresh(ctx); err != nil {
			return nil, err
		}
		info, c = v.Info(), nil
	}
	addr, state := info.Network.SSHAddr, info.State
	if state == StatePaused {
		return nil, fmt.Errorf("%w: it is paused; Resume it first", ErrNotRunning)
	}
	if c != nil {
		return c, nil
	}
	if state != StateRunning {
		return nil, fmt.Errorf("%w (state %s): start it first", ErrNotRunning, state)
	}
	hostKey, key, err := v.loadKeys()
	if err != nil {
		return nil, err
	}
	c, err = guest.Dial(ctx, addr, hostKey, key)
	if err != nil {
		return nil, err
	}
	c.SetPeerCheck(v.peerState)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.client != nil { // another goroutine won the race
		c.Close()
		return v.client, nil
	}
	v.client = c
	return c, nil
}

func (v *VM) loadKeys() (ssh.PublicKey, ssh.Signer, error) {
	hostKey, err := v.hostKey()
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(v.paths.clientKey())
	if err != nil {
		return nil, nil, fmt.Errorf("client key: %w", err)
	}
	key, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("client key: %w", err)
	}
	return hostKey, key, nil
}

// hostKey is the guest's pinned SSH host key.
func (v *VM) hostKey() (ssh.PublicKey, error) {
	b, err := os.ReadFile(v.paths.hostKeyPub())
	if err != nil {
		return nil, fmt.Errorf("guest host key: %w", err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("guest host key: %w", err)
	}
	return k, nil
}

// writeKnownHosts lets a standard ssh client check the guest's pinned key:
// ssh -i DIR/id_ed25519 -o UserKnownHostsFile=DIR/known_hosts root@IP.
func (v *VM) writeKnownHosts() error {
	hostKey, err := v.hostKey()
	if err != nil {
		return err
	}
	addr := v.Info().Network.SSHAddr
	line := guest.KnownHostsLine(addr, hostKey) + "\n"
	return os.WriteFile(v.paths.knownHosts(), []byte(line), 0o600)
}

func (v *VM) runtime() runtimeRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rt
}

// dropClient closes the SSH connection; v.mu must be held.
func (v *VM) dropClient() {
	if v.client != nil {
		v.client.Close()
		v.client = nil
	}
}

// Stop shuts the guest down cleanly, or kills it after timeout (0 means
// DefaultStopTimeout). Stopping a stopped VM is a no-op.
func (v *VM) Stop(ctx context.Context, timeout time.Duration) error {
	unlock, err := v.lock(ctx)
	if err != nil {
		return opError("stop", v.id, err)
	}
	defer unlock()
	return opError("stop", v.id, v.stop(ctx, timeout))
}

func (v *VM) stop(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	info := v.Info()
	if info.State == StatePaused {
		// A frozen guest cannot shut itself down: let it run first.
		if err := v.setPaused(ctx, false); err != nil {
			v.log().Warn("stop: resume before shutdown", "err", err)
		}
	}
	if hypervisor.Alive(info.PID, info.Process) {
		graceful, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if c, err := v.conn(graceful); err == nil {
			c.Poweroff(graceful)
		}
		if err := hypervisor.WaitExit(graceful, info.PID, info.Process); err != nil {
			v.log().Warn("stop: clean shutdown timed out; killing", "timeout", timeout)
			if err := hypervisor.Kill(ctx, info.PID, info.Process); err != nil {
				return err
			}
		}
	}
	v.releaseRunResources()
	return v.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		if row.State != string(StateCreated) {
			row.State = string(StateStopped)
		}
		row.PID, rt.Error = 0, ""
		return nil
	})
}

// releaseRunResources drops what only a running VM needs: the connection,
// the TAP device and its firewall rules. The IP lease and the recorded
// port forwards stay until Delete.
func (v *VM) releaseRunResources() {
	v.mu.Lock()
	v.dropClient()
	tap, name := v.info.Network.TAP, v.info.Process
	v.mu.Unlock()
	if tap == "" {
		return
	}
	if err := firewallRemoveVM(name); err != nil {
		v.log().Warn("remove firewall rules", "err", err)
	}
	if err := network.DeleteTAP(tap); err != nil {
		v.log().Warn("delete tap", "err", err)
	}
}

// Delete removes the VM: its process, TAP device, state row and IP lease,
// and its data directory, except the disk when RetainDiskOnDelete is set.
// The handle is closed; deleting again through it is a no-op.
func (v *VM) Delete(ctx context.Context) error {
	v.mu.Lock()
	deleted := v.deleted
	v.mu.Unlock()
	if deleted {
		return nil
	}
	var err error
	if unlock, lerr := v.lock(ctx); lerr == nil {
		err = v.delete(ctx)
		unlock()
	} else if errors.Is(lerr, ErrNotFound) {
		err = v.delete(ctx) // no directory left to lock: finish removing the row
	} else {
		err = lerr
	}
	if err == nil {
		v.mu.Lock()
		v.deleted = true
		v.mu.Unlock()
		v.Close()
	}
	return opError("delete", v.id, err)
}

func (v *VM) delete(ctx context.Context) error {
	if err := v.load(ctx); err != nil {
		return err
	}
	info := v.Info()
	if hypervisor.Alive(info.PID, info.Process) {
		if info.Config.RetainDiskOnDelete {
			// The disk outlives the VM: shut down cleanly so it is consistent.
			if err := v.stop(ctx, DefaultStopTimeout); err != nil {
				return err
			}
		} else if err := hypervisor.Kill(ctx, info.PID, info.Process); err != nil {
			return err
		}
	}
	v.releaseRunResources()
	if info.Config.RetainDiskOnDelete {
		ents, _ := os.ReadDir(v.paths.dir)
		for _, e := range ents {
			if p := v.paths.dir + "/" + e.Name(); p != v.paths.disk() {
				os.RemoveAll(p)
			}
		}
	} else if err := os.RemoveAll(v.paths.dir); err != nil {
		return err
	}
	if err := v.st.DeleteVM(ctx, v.id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	v.log().Info("deleted", "kept_disk", info.Config.RetainDiskOnDelete)
	return nil
}

// guestCmdline is the per-VM part of the kernel command line.
func guestCmdline(id string, n NetworkInfo, mounts []Mount) string {
	parts := []string{"smolvm.hostname=" + id, fmt.Sprintf("smolvm.ip=%s/%d", n.GuestIP, n.Prefix)}
	for i, m := range mounts {
		mode := "ro"
		if m.Writable {
			mode = "rw"
		}
		parts = append(parts, fmt.Sprintf("smolvm.mount=%s:%s:%s", mountTag(i), m.GuestPath, mode))
	}
	if n.Gateway != "" {
		parts = append(parts, "smolvm.gw="+n.Gateway)
	}
	if n.Mode == NetworkUser {
		parts = append(parts, "smolvm.dns="+network.UserDNS.String())
	}
	return strings.Join(parts, " ")
}

// undoStack runs cleanup steps in reverse when a multi-step operation
// fails half-way.
type undoStack struct {
	steps []undoStep
}

type undoStep struct {
	name string
	fn   func() error
}

func (u *undoStack) push(name string, fn func() error) {
	u.steps = append(u.steps, undoStep{name, fn})
}

func (u *undoStack) run(log *slog.Logger) {
	for i := len(u.steps) - 1; i >= 0; i-- {
		s := u.steps[i]
		if err := s.fn(); err != nil {
			log.Warn("undo failed", "step", s.name, "err", err)
		} else {
			log.Debug("undone", "step", s.name)
		}
	}
}

func mountTag(i int) string { return fmt.Sprintf("smol%d", i) }
