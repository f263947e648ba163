package smolvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// addToCgroup writes the running VM's QEMU (p) into g, and only it. The
// PID was read from the store a while ago: had QEMU died since and the PID
// gone to another process, writing it to cgroup.procs would hold that
// stranger to this VM's limits (and its OOM kill). So the process is
// pinned with a pidfd, checked to be this VM's QEMU, written, and checked
// to be alive still: alive after the write, the PID cannot have changed
// hands in between.
func (v *VM) addToCgroup(g cgroup.Group, p hypervisor.Process) error {
	name := v.Info().Process
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil || !hypervisor.Alive(p, name) {
		if err == nil {
			unix.Close(fd)
		}
		return fmt.Errorf("vm %s: %w: its QEMU (PID %d) has exited", v.id, ErrNotRunning, p.PID)
	}
	defer unix.Close(fd)
	if err := g.Add(p.PID); err != nil {
		return err
	}
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("vm %s: %w: its QEMU (PID %d) exited while it joined its cgroup", v.id, ErrNotRunning, p.PID)
		}
		return fmt.Errorf("vm %s: cgroup: %w", v.id, err)
	}
	return nil
}
