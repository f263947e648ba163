package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/statedir"
)

// The serial console is bounded so that a guest writing to it without end
// costs the host neither disk nor memory without end. While the VM boots
// QEMU writes the console to console.log, so a boot that fails leaves its
// messages there. Once the guest is ready, or earlier if the boot log
// passes ConsoleLogMax (the kernel and agent write little, but the agent
// runs the image's shell once as it gets ready), the console moves to a
// ring buffer in QEMU (QMP chardev-change); whoever reads the log (smolvm
// logs, Stop) first moves what the ring holds into console.log, which is
// rotated to console.log.1 when it would pass ConsoleLogMax.
const (
	// ConsoleLogMax bounds each of the two console log files.
	ConsoleLogMax = 1 << 20
	// consoleRing is what QEMU keeps of the console between two reads
	// (a power of two, at most ConsoleLogMax).
	consoleRing = 1 << 20
)

// newConsoleLog makes an empty console log for a boot, 0600: QEMU would
// create it 0644 less the umask, and the console can carry secrets.
func newConsoleLog(p paths) error {
	os.Remove(p.consoleOld())
	os.Remove(p.console())
	f, err := os.OpenFile(p.console(), os.O_CREATE|os.O_EXCL|os.O_WRONLY, statedir.FileMode)
	if err != nil {
		return err
	}
	return f.Close()
}

// consoleGuard moves a booting VM's console to the ring, once.
type consoleGuard struct {
	v    *VM
	once sync.Once
	err  error
}

// guardConsole watches the boot log until ctx ends and moves the console
// to the ring as soon as the log passes ConsoleLogMax.
func (v *VM) guardConsole(ctx context.Context) *consoleGuard {
	g := &consoleGuard{v: v}
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if fi, err := os.Stat(v.paths.console()); err == nil && fi.Size() > ConsoleLogMax {
				if err := g.bound(ctx); err != nil {
					v.log().Warn("console: early move to the ring", "err", err)
				}
				return
			}
		}
	}()
	return g
}

// bound moves the console to the ring unless that was done already.
func (g *consoleGuard) bound(ctx context.Context) error {
	g.once.Do(func() { g.err = g.v.boundConsole(ctx) })
	return g.err
}

// boundConsole moves the booted guest's console into QEMU's ring buffer.
func (v *VM) boundConsole(ctx context.Context) error {
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	defer q.Close()
	if err := q.ConsoleToRing(qemu.ConsoleChardev, consoleRing); err != nil {
		return fmt.Errorf("console: %w", err)
	}
	return nil
}

// ConsoleLogs brings the VM's console log up to date and returns its
// files, oldest first (console.log.1 when there is one, then console.log,
// which VMInfo.ConsoleLog names). Each holds at most ConsoleLogMax bytes;
// output older than the two files is gone.
func (v *VM) ConsoleLogs(ctx context.Context) ([]string, error) {
	if err := v.exists(ctx); err != nil {
		return nil, opError("console log", v.id, err)
	}
	if err := v.syncConsole(ctx); err != nil {
		return nil, opError("console log", v.id, err)
	}
	var files []string
	for _, p := range []string{v.paths.consoleOld(), v.paths.console()} {
		if _, err := os.Stat(p); err == nil {
			files = append(files, p)
		}
	}
	return files, nil
}

// syncConsole moves what QEMU's console ring holds into the log files.
// A VM that does not run, or still boots (its console is still the file),
// has nothing to move.
func (v *VM) syncConsole(ctx context.Context) error {
	info := v.Info()
	if info.State != StateRunning && info.State != StatePaused || !hypervisor.Alive(v.process(), info.Process) {
		return nil
	}
	unlock, err := flock.Lock(ctx, filepath.Join(v.paths.dir, ".console.lock"), statedir.FileMode)
	if err != nil {
		return err
	}
	defer unlock()
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	for {
		b, err := q.ReadRing(qemu.ConsoleChardev, consoleRing)
		if err != nil {
			// Not moved to the ring yet (booting): QEMU writes the file.
			return nil
		}
		if len(b) == 0 {
			return nil
		}
		if err := appendConsole(v.paths, b); err != nil {
			return err
		}
	}
}

// appendConsole adds b to console.log, first rotating it to console.log.1
// if b would take it past ConsoleLogMax.
func appendConsole(p paths, b []byte) error {
	if len(b) > ConsoleLogMax {
		b = b[len(b)-ConsoleLogMax:]
	}
	if fi, err := os.Stat(p.console()); err == nil && fi.Size()+int64(len(b)) > ConsoleLogMax {
		if err := os.Rename(p.console(), p.consoleOld()); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(p.console(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, statedir.FileMode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	return errors.Join(err, f.Close())
}

// consoleTail returns the end of the console log, for error messages.
func (v *VM) consoleTail() string {
	const n = 2048
	f, err := os.Open(v.paths.console())
	if err != nil {
		return "(console log empty)"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	if len(b) == 0 {
		return "(console log empty)"
	}
	return "console log tail:\n" + string(b)
}
