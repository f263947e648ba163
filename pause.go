package smolvm

import (
	"context"
	"fmt"

	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/store"
)

// Pause freezes the running VM's vCPUs; its memory, disk and network
// state stay as they are until Resume. New commands fail with
// ErrNotRunning meanwhile; commands already running stay, frozen with the
// guest, and carry on after Resume (their connection's keepalive knows the
// silence is on purpose).
func (v *VM) Pause(ctx context.Context) error {
	return opError("pause", v.id, v.setPaused(ctx, true))
}

// Resume continues a paused VM.
func (v *VM) Resume(ctx context.Context) error {
	return opError("resume", v.id, v.setPaused(ctx, false))
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
