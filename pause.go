package smolvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/store"
)

// Pause freezes the running VM's vCPUs; its memory, disk and network
// state stay as they are until Resume. New commands fail with
// ErrNotRunning meanwhile; commands already running stay, frozen with the
// guest, and carry on after Resume (their connection's keepalive knows the
// silence is on purpose).
//
// With ToDisk the VM hibernates instead: its memory and device state go to
// its directory and its QEMU exits, so it holds no host memory at all;
// Resume (or Start) brings it back with its processes as they were, also
// after every smolvm and QEMU process on the host was killed meanwhile.
func (v *VM) Pause(ctx context.Context, opts ...PauseOption) error {
	var o pauseOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.toDisk {
		unlock, err := v.lock(ctx)
		if err != nil {
			return opError("hibernate", v.id, err)
		}
		defer unlock()
		return opError("hibernate", v.id, v.hibernate(ctx))
	}
	return opError("pause", v.id, v.setPaused(ctx, true))
}

// PauseOption adjusts Pause.
type PauseOption func(*pauseOptions)

type pauseOptions struct{ toDisk bool }

// ToDisk makes Pause hibernate the VM: memory to disk, QEMU gone.
func ToDisk() PauseOption { return func(o *pauseOptions) { o.toDisk = true } }

// Resume continues a paused VM, or brings a hibernated one back.
func (v *VM) Resume(ctx context.Context) error {
	if err := v.Refresh(ctx); err != nil {
		return opError("resume", v.id, err)
	}
	if v.Status() == StateHibernated {
		return v.Start(ctx)
	}
	return opError("resume", v.id, v.setPaused(ctx, false))
}

// hibernate captures the VM into its own directory and ends its QEMU; the
// next start resumes from the capture. v's lock is held.
func (v *VM) hibernate(ctx context.Context) error {
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	info, rt := v.Info(), v.runtime()
	switch {
	case info.State == StateHibernated:
		return nil
	case info.State != StateRunning && info.State != StatePaused:
		return fmt.Errorf("%w (state %s): only a running VM hibernates", ErrNotRunning, info.State)
	case len(info.Config.Mounts) > 0:
		return &ValidationError{Field: "hibernate", Value: v.id, Reason: "a VM with host folder mounts cannot hibernate (QEMU cannot migrate a mounted 9p share)"}
	}
	if err := v.refuseSecrets("hibernation"); err != nil {
		return err
	}
	backend, err := newBackend()
	if err != nil {
		return err
	}
	snap, ok := backend.(hypervisor.Snapshotter)
	if !ok || !backend.Capabilities().Snapshot {
		return fmt.Errorf("%w: the %s backend cannot hibernate VMs", ErrInvalid, backend.Name())
	}
	// As a snapshot does: a hibernation killed while it holds the VM
	// paused is undone by the next look (reconcile).
	doneCapture, err := v.markCapture(ctx, info.State)
	if err != nil {
		return err
	}
	defer doneCapture()
	// Console first: the ring goes with QEMU.
	v.syncConsole(ctx)
	state, mem := v.paths.hibernation("state"), v.paths.hibernation("memory")
	os.Remove(state)
	os.Remove(mem)
	files, err := snap.Snapshot(ctx, v.process(), v.paths.qmp(),
		hypervisor.SnapshotFiles{State: state, Memory: mem, MemoryID: rt.Instance + "-hib-" + newInstance()})
	if err != nil {
		os.Remove(state)
		os.Remove(mem)
		v.cont(ctx)
		return err
	}
	if err := v.update(ctx, func(row *store.VM, r *runtimeRecord) error {
		row.State = string(StateHibernated)
		r.Restore, r.RestoreSelf = &files, true
		r.RestoreInitrd, r.RestoreCmdline, r.RestoreEnv = r.BootInitrd, r.Cmdline, nil
		return nil
	}); err != nil {
		v.cont(ctx)
		return err
	}
	if err := hypervisor.KillByName(ctx, v.process(), info.Process); err != nil {
		return err
	}
	v.releaseRunResources()
	err = v.update(ctx, func(row *store.VM, _ *runtimeRecord) error {
		row.PID = 0
		return nil
	})
	v.log().Info("hibernated")
	return err
}

func (v *VM) setPaused(ctx context.Context, pause bool) error {
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	from, to, cmd := StateRunning, StatePaused, "stop"
	if !pause {
		from, to, cmd = StatePaused, StateRunning, "cont"
	}
	if st := v.Status(); st == to {
		return nil
	} else if st != from {
		return fmt.Errorf("%w (state %s)", ErrNotRunning, st)
	}
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := q.Execute(cmd, nil); err != nil {
		return err
	}
	return v.update(ctx, func(row *store.VM, _ *runtimeRecord) error {
		row.State = string(to)
		return nil
	})
}

// hibernation is a file of the VM's hibernation capture.
func (p paths) hibernation(name string) string { return filepath.Join(p.dir, "hibernation."+name) }
