package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"syscall"
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
	// Not for a VM that is gone: the lock file would land in the directory
	// of a disk it kept (kept.go ignores it there, all the same).
	if err := v.exists(ctx); err != nil {
		return nil, err
	}
	unlock, err := flock.Lock(ctx, v.paths.lock(), 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (its directory %s is gone)", ErrNotFound, v.paths.dir)
	}
	return unlock, err
}

func (v *VM) start(ctx context.Context) (err error) {
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	if err := v.refuseExpired(ctx); err != nil {
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
	// A connection cached from an earlier run of the VM leads nowhere.
	v.mu.Lock()
	v.dropClient()
	v.mu.Unlock()
	backend, err := newBackend()
	if err != nil {
		return err
	}
	timeout := info.Config.BootTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl).Round(time.Millisecond) // what the message names
	}
	bootCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var undo undoStack
	defer func() {
		if err != nil {
			// Whatever step the deadline cut short, the start timed out.
			if errors.Is(bootCtx.Err(), context.DeadlineExceeded) && !errors.Is(err, ErrTimeout) {
				err = &TimeoutError{Op: "start", VM: v.id, Timeout: timeout, Detail: err.Error()}
			}
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
	if net.Mode == NetworkTAP {
		if net, err = v.freeAddress(ctx, net, rt.Restore == nil); err != nil {
			return err
		}
	}
	name := info.Process
	runAs, err := vmCredential(rt.Instance, backend.Capabilities().Accelerated, info.Config.Mounts)
	if err != nil {
		return err
	}
	var guestFwds []hypervisor.GuestForward
	if net.Mode == NetworkUser {
		net.Proxy = ""
		fwd, err := v.prepareProxy(ctx, name, runAs, info.Config)
		if err != nil {
			v.log().Warn("start: no egress proxy, so the VM has no egress", "err", err)
		} else {
			guestFwds, net.Proxy = []hypervisor.GuestForward{fwd}, fwd.Addr
			undo.push("egress proxy", func() error { removeProxySpec(v.paths.dir, name); return nil })
		}
	}
	spec := hypervisor.Spec{
		ID: v.id, Name: name, VCPUs: info.Config.VCPUs, MemoryMiB: info.Config.MemoryMiB,
		Kernel: rt.Kernel, Initrd: rt.Initrd, Disk: v.diskPath(), DiskBase: rt.DiskBase,
		ConsoleLog: v.paths.console(), ProcessLog: v.paths.processLog(), ControlSocket: v.paths.qmp(),
		AgentSocket: v.paths.agentSocket(),
		RunAs:       runAs,
		Cmdline:     rt.BootArgs + " " + guestCmdline(v.id, net, info.Config.Mounts),
		Net:         hypervisor.NetSpec{TAP: net.TAP, MAC: network.MAC(v.id), GuestForwards: guestFwds},
	}
	spec.Mounts = hypervisorMounts(info.Config.Mounts)
	bootPath := "cold"
	if rt.Restore != nil {
		// The first start of a VM made from a memory snapshot resumes it,
		// with the snapshot's own initramfs and command line (the machine
		// must be the one the memory was taken from).
		spec.Restore, spec.Initrd, spec.Cmdline, bootPath = rt.Restore, rt.RestoreInitrd, rt.RestoreCmdline, "snapshot"
		if rt.RestoreSelf {
			bootPath = "hibernation"
		}
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
		if err := network.CreateTAP(network.TAP{Name: net.TAP, Host: host, Alias: network.AliasPrefix + v.paths.dir}); err != nil {
			return err
		}
		undo.push("tap", func() error { return network.DeleteTAP(net.TAP) })
		if err := firewallAddVM(name, net, info.Config, forwards); err != nil {
			return err
		}
		undo.push("firewall", func() error { return firewallRemoveVM(name) })
		if err := writeResolverSpec(v.paths.dir, name, net, info.Config); err != nil {
			return err
		}
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
	// Before the launch, so a VM that boots after its starter was killed
	// is reachable with plain ssh too.
	if err := v.writeKnownHosts(net.SSHAddr); err != nil {
		return err
	}
	// A process left by a killed start of this VM would hold its disk.
	if err := hypervisor.KillByName(ctx, hypervisor.Process{}, name); err != nil {
		return err
	}
	// Should this process die from here on, the next look at the VM
	// (reconcile, delete, doctor) finds the QEMU by its name.
	undo.push("vm process", func() error { return hypervisor.KillByName(context.Background(), hypervisor.Process{}, name) })
	if err := newConsoleLog(v.paths); err != nil {
		return err
	}
	limitsStarted, err := v.limitsBeforeStart(bootCtx, info.Config.Limits, &spec, &undo)
	if err != nil {
		return err
	}
	proc, err := backend.Start(bootCtx, spec)
	limitsStarted()
	if err != nil {
		return err
	}
	if err := v.limitsAfterStart(bootCtx, info.Config.Limits); err != nil {
		return err
	}
	console := v.guardConsole(bootCtx)
	if spec.Restore != nil && !rt.RestoreSelf {
		// A resumed clone still is its snapshot's source until it takes
		// its own identity, so it is recorded as running only after that:
		// should this process die before, nobody holds the lock and the
		// VM does not run, so the next look kills the QEMU by its name.
		if err := v.reidentify(bootCtx, net.Proxy); err != nil {
			if bootCtx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				return &TimeoutError{Op: "start", VM: v.id, Timeout: timeout, Detail: "the resumed guest did not take its new identity in time: " + err.Error()}
			}
			return err
		}
		v.log().Debug("start: new identity", "after", time.Since(began))
	}
	if err := v.update(ctx, func(row *store.VM, r *runtimeRecord) error {
		row.State, row.PID, r.ProcStart = string(StateRunning), proc.PID, proc.Start
		r.Network, r.Backend, r.StartedAt, r.Error = net, backend.Name(), time.Now().UTC(), ""
		r.Cmdline, r.BootInitrd, r.Path = spec.Cmdline, spec.Initrd, bootPath
		if spec.Restore != nil { // resumed once; from now on it boots from its disk
			r.Restore, r.RestoreInitrd, r.RestoreCmdline, r.RestoreEnv, r.RestoreSelf = nil, "", "", nil, false
		}
		return nil
	}); err != nil {
		return err
	}
	v.log().Debug("start: process up", "pid", proc.PID, "after", time.Since(began))
	if spec.Restore != nil && rt.RestoreSelf {
		// Back from hibernation: the same machine, but its clock stood
		// still while it was on disk.
		if err := v.setGuestClock(bootCtx); err != nil {
			v.log().Warn("start: set the clock after hibernation", "err", err)
		}
		os.Remove(spec.Restore.State)
		os.Remove(spec.Restore.Memory)
	}

	if err := v.waitReady(bootCtx, proc, name, timeout); err != nil {
		return err
	}
	if err := console.bound(bootCtx); err != nil {
		return err
	}
	if err := v.pushStartSecrets(bootCtx); err != nil {
		return err
	}
	if spec.Restore != nil && !rt.RestoreSelf {
		if err := v.applyEnv(bootCtx, rt.RestoreEnv, info.Config.Env); err != nil {
			return err
		}
	}
	// (A clone keeps its copy of the snapshot's initramfs: it is the one
	// its kernel runs with, which a hibernation needs again.)
	if err := v.ensureKeeper(ctx); err != nil {
		if !info.Config.ExpiresAt.IsZero() {
			return fmt.Errorf("the VM has a lifetime and no keeper to enforce it: %w", err)
		}
		v.log().Warn("start: no keeper", "err", err)
	}
	v.log().Info("started", "path", bootPath, "pid", proc.PID, "ip", net.GuestIP, "boot", time.Since(began).Round(time.Millisecond))
	return nil
}

// vmCredential is who a VM's QEMU runs as. As root, each VM gets a user of
// its own, derived from its instance, in a range no distribution or
// systemd hands out (0x70000000-0x70FFFFFF): a guest that escapes QEMU is
// no one on the host and cannot touch another VM. A VM sharing folders
// that one non-root user owns runs as that user instead, who shares them
// anyway; shared folders of root's must be open to others. Not as root,
// QEMU runs as the caller. With KVM the user also needs /dev/kvm's group.
func vmCredential(instance string, kvm bool, mounts []Mount) (*hypervisor.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	b, err := hex.DecodeString(instance)
	if err != nil || len(b) < 3 {
		sum := sha256.Sum256([]byte(instance))
		b = sum[:]
	}
	id := uint32(0x70000000) | uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
	c := &hypervisor.Credential{UID: id, GID: id, Groups: []uint32{}}
	if owner, ok := mountsOwner(mounts); ok {
		c.UID, c.GID = owner.Uid, owner.Gid
	} else {
		c.Own = true
		for _, m := range mounts {
			if err := openToOthers(m); err != nil {
				return nil, err
			}
		}
	}
	if fi, err := os.Stat("/dev/kvm"); err == nil && kvm {
		c.Groups = append(c.Groups, fi.Sys().(*syscall.Stat_t).Gid)
	}
	return c, nil
}

// mountsOwner returns the owner of the shared folders when one non-root
// user owns them all.
func mountsOwner(mounts []Mount) (*syscall.Stat_t, bool) {
	var owner *syscall.Stat_t
	for _, m := range mounts {
		fi, err := os.Stat(m.HostPath)
		if err != nil {
			return nil, false
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid == 0 || (owner != nil && owner.Uid != st.Uid) {
			return nil, false
		}
		owner = st
	}
	return owner, owner != nil
}

// openToOthers checks that an unprivileged QEMU can use a shared folder.
func openToOthers(m Mount) error {
	fi, err := os.Stat(m.HostPath)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.HostPath, err)
	}
	need, how := os.FileMode(0o005), "o+rx"
	if m.Writable {
		need, how = 0o007, "o+rwx"
	}
	if fi.Mode().Perm()&need != need {
		return &ValidationError{Field: "mount", Value: m.HostPath, Reason: fmt.Sprintf(
			"QEMU runs as an unprivileged user so that a guest breaking out of it reaches nothing on the host, and it cannot use this root-owned folder: share a folder a non-root user owns (QEMU then runs as that user), or open it with chmod %s", how)}
	}
	return nil
}

// freeAddress returns net, or, when an interface on the host uses its
// address (a VM of another state directory took it while this one did not
// run: state directories do not see each other's leases), net with a
// fresh lease, recorded, if canMove. Only a VM that boots can move: a
// resumed one's memory holds its address.
func (v *VM) freeAddress(ctx context.Context, net NetworkInfo, canMove bool) (NetworkInfo, error) {
	host, err := netip.ParsePrefix(net.HostIP)
	if err != nil {
		return net, fmt.Errorf("stored host address: %w", err)
	}
	if network.TAPExists(net.TAP) || !network.AddrInUse(host.Masked()) {
		return net, nil
	}
	if !canMove {
		return net, fmt.Errorf("address %s of this VM is in use on the host by another interface (a VM of another smolvm state directory?), and the VM's memory holds it: stop that, or create this VM again to get a free address, or set SMOLVM_SUBNET; smolvm doctor lists what smolvm left behind and smolvm doctor --fix removes it", net.HostIP)
	}
	pool, err := resolvePool(v.s.subnet)
	if err != nil {
		return net, err
	}
	if err := v.st.ReleaseIP(ctx, v.id); err != nil {
		return net, err
	}
	moved, err := leaseTAP(ctx, v.st, pool, v.id, net.TAP)
	if err != nil {
		return net, err
	}
	if err := v.update(ctx, func(_ *store.VM, r *runtimeRecord) error { r.Network = moved; return nil }); err != nil {
		return net, err
	}
	v.log().Info("start: the VM's address is in use on the host; it moves", "from", net.GuestIP, "to", moved.GuestIP)
	return moved, nil
}

// waitReady connects to the guest's SSH server, giving up when the VM
// process dies (with the console tail, which says why) or ctx ends.
func (v *VM) waitReady(ctx context.Context, proc hypervisor.Process, name string, timeout time.Duration) error {
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
				if !hypervisor.Alive(proc, name) {
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
	// One indexed read, so a handle whose VM was deleted elsewhere fails
	// with ErrNotFound instead of using a connection to what is gone.
	if err := v.exists(ctx); err != nil {
		return nil, err
	}
	v.mu.Lock()
	c := v.client
	if c != nil && c.Err() != nil { // ended (guest restarted, or stopped answering)
		v.dropClient()
		c = nil
	}
	info := v.info
	v.mu.Unlock()
	if (info.State == StateRunning || info.State == StatePaused) && !hypervisor.Alive(v.process(), info.Process) {
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
	addr, tap, state := info.Network.SSHAddr, info.Network.TAP, info.State
	if state == StatePaused {
		return nil, fmt.Errorf("%w: it is paused; resume it first (smolvm resume %s)", ErrNotRunning, v.id)
	}
	if c != nil {
		return c, nil
	}
	if state != StateRunning {
		return nil, fmt.Errorf("%w (state %s): start it first (smolvm start %s)", ErrNotRunning, state, v.id)
	}
	hostKey, key, err := v.loadKeys()
	if err != nil {
		return nil, err
	}
	var via []guest.DialOption
	if tap != "" {
		// Through the VM's own TAP or not at all: never out of another
		// interface if the device is gone.
		via = append(via, guest.Via(tap))
	}
	c, err = guest.Dial(ctx, addr, hostKey, key, via...)
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
func (v *VM) writeKnownHosts(addr string) error {
	hostKey, err := v.hostKey()
	if err != nil {
		return err
	}
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
// DefaultStopTimeout; negative is invalid). Stopping a stopped VM is a
// no-op.
func (v *VM) Stop(ctx context.Context, timeout time.Duration) error {
	if timeout < 0 {
		return opError("stop", v.id, &ValidationError{Field: "stop timeout", Value: timeout, Reason: "must not be negative; 0 means the default, " + DefaultStopTimeout.String()})
	}
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
	if proc := v.process(); hypervisor.Alive(proc, info.Process) {
		// Keep the guest's last words: the console ring goes with QEMU.
		if err := v.syncConsole(ctx); err != nil {
			v.log().Warn("stop: save console", "err", err)
		}
		graceful, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if c, err := v.conn(graceful); err == nil {
			c.Poweroff(graceful)
		}
		if err := hypervisor.WaitExit(graceful, proc, info.Process); err != nil {
			v.log().Warn("stop: clean shutdown timed out; killing", "timeout", timeout)
			if err := hypervisor.Kill(ctx, proc, info.Process); err != nil {
				return err
			}
		}
	}
	v.releaseRunResources()
	if rt := v.runtime(); rt.RestoreSelf && rt.Restore != nil { // a hibernated VM stopped: it boots next time
		os.Remove(rt.Restore.State)
		os.Remove(rt.Restore.Memory)
	}
	return v.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		if rt.RestoreSelf {
			rt.Restore, rt.RestoreInitrd, rt.RestoreCmdline, rt.RestoreSelf = nil, "", "", false
		}
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
	v.releaseLimits(tap)
	v.stopKeeper()
	removeProxySpec(v.paths.dir, name)
	if tap == "" {
		return
	}
	removeResolverSpec(v.paths.dir)
	if err := firewallRemoveVM(name); err != nil {
		v.log().Warn("remove firewall rules", "err", err)
	}
	if err := network.DeleteTAP(tap); err != nil {
		v.log().Warn("delete tap", "err", err)
	}
}

// Delete removes the VM: its process, TAP device, state row and IP lease,
// and its data directory, except the disk when RetainDiskOnDelete is set.
// The handle is closed; deleting again through it is a no-op, while its
// other methods, and all methods of other handles on the VM, fail with
// ErrNotFound.
func (v *VM) Delete(ctx context.Context) error {
	v.mu.Lock()
	deleted := v.deletedHere
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
		v.markDeleted()
		v.mu.Lock()
		v.deletedHere = true
		v.mu.Unlock()
		if from := v.runtime().FromSnapshot; from != "" {
			removeAutoSnapshot(context.WithoutCancel(ctx), v.s, from)
		}
		v.Close()
	}
	return opError("delete", v.id, err)
}

func (v *VM) delete(ctx context.Context) error {
	if err := v.load(ctx); err != nil {
		return err
	}
	info := v.Info()
	if hypervisor.Alive(v.process(), info.Process) && info.Config.RetainDiskOnDelete {
		// The disk outlives the VM: shut down cleanly so it is consistent.
		if err := v.stop(ctx, DefaultStopTimeout); err != nil {
			return err
		}
	}
	// Whatever the row says: a start killed before it recorded its process
	// leaves one that only its name finds.
	if err := hypervisor.KillByName(ctx, v.process(), info.Process); err != nil {
		return err
	}
	v.releaseRunResources()
	if info.Config.RetainDiskOnDelete {
		if err := removeAllButDisk(v.paths); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else if err := removeVMDir(v.paths.dir); err != nil {
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
	if n.Proxy != "" {
		parts = append(parts, "smolvm.proxy="+n.Proxy) // egress.go
	}
	if n.Mode == NetworkUser {
		parts = append(parts, "smolvm.dns="+network.UserDNS.String())
	} else if n.Gateway != "" {
		parts = append(parts, "smolvm.dns="+n.Gateway) // smolvm's resolver (egress.go)
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
