package keeper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// DirArg is the command-line argument that names the VM a keeper keeps:
// with the pid file's start time, it is how a keeper is told from any
// other process that reuses its pid.
func DirArg(dir string) string { return "--dir=" + dir }

// SpawnOptions say which keeper to start for which VM.
type SpawnOptions struct {
	Exe  string             // the smolvm CLI
	Dir  string             // the VM's directory
	QEMU hypervisor.Process // the VM process, with its start time
	Name string             // the VM process's name (hypervisor.Name)
	// Wait bounds how long Spawn waits for the keeper to hold its lock;
	// 0 = 10s.
	Wait time.Duration
}

// maxLog is where the keeper's log file starts again at a spawn: a keeper
// logs a few lines per event, so only a runaway one gets near it.
const maxLog = 1 << 20

// Spawn starts a keeper for the VM, detached (its own session, stdin
// /dev/null, stdout and stderr to keeper.log in the VM's directory, no
// other descriptors, an environment cut down to what smolvm reads, so no
// secret of the caller's environment lives on in it), and returns once it
// holds its lock. A keeper already keeping the VM makes the new one exit
// at once: Spawn is safe to call from racing processes.
func Spawn(ctx context.Context, o SpawnOptions) error {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	if o.Wait <= 0 {
		o.Wait = 10 * time.Second
	}
	logPath := filepath.Join(dir, LogFile)
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND | unix.O_CLOEXEC
	if fi, err := os.Stat(logPath); err == nil && fi.Size() > maxLog {
		flags |= os.O_TRUNC
	}
	logf, err := os.OpenFile(logPath, flags, 0o600)
	if err != nil {
		return fmt.Errorf("keeper: log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(o.Exe, Command, DirArg(dir),
		"--vm-pid="+strconv.Itoa(o.QEMU.PID),
		"--vm-start="+strconv.FormatUint(o.QEMU.Start, 10),
		"--vm-name="+o.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = keeperEnv(os.Environ())
	cmd.Dir = "/"
	// Its own session, as QEMU: a terminal's Ctrl-C or hangup to the
	// caller must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("keeper: start %s: %w", o.Exe, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reaped while we live; by init after
	lock := filepath.Join(dir, LockFile)
	wait, cancel := context.WithTimeout(ctx, o.Wait)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	// Up once the pid file names our child; or, when our child left
	// because another keeper has the VM, once it names that one. Never
	// before our child settled: it would take over from a keeper that
	// ends meanwhile, behind the caller's back.
	var gone <-chan struct{} = exited
	for {
		p, ok := Find(dir)
		if ok && (p.PID == cmd.Process.Pid || gone == nil) {
			return nil
		}
		select {
		case <-gone:
			if !flock.Held(lock) {
				return fmt.Errorf("keeper: exited at once (%s); see %s", cmd.ProcessState, logPath)
			}
			gone = nil // another keeper has the VM; its pid file is on the way
		case <-wait.Done():
			return fmt.Errorf("keeper: not up after %s; see %s: %w", o.Wait, logPath, wait.Err())
		case <-t.C:
		}
	}
}

// keeperEnv keeps what a keeper may need of the caller's environment:
// where things are, never the rest (a CLI given --secret NAME reads the
// value from its own environment).
func keeperEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "SMOLVM_TOKEN":
		case strings.HasPrefix(k, "SMOLVM_"), strings.HasPrefix(k, "XDG_"),
			k == "PATH", k == "HOME", k == "USER", k == "LOGNAME", k == "TMPDIR", k == "TZ", k == "LANG":
			out = append(out, kv)
		}
	}
	return out
}

// Running reports whether a keeper keeps the VM in dir: its lock is held.
// The kernel drops the lock with the process, so a keeper killed by -9
// reads as gone at once.
func Running(dir string) bool { return flock.Held(filepath.Join(dir, LockFile)) }

// Find returns the keeper of the VM in dir from its pid file, checked:
// the same start time and the VM's directory on its command line.
func Find(dir string) (hypervisor.Process, bool) {
	b, err := os.ReadFile(filepath.Join(dir, PidFile))
	if err != nil || len(b) > 64 {
		return hypervisor.Process{}, false
	}
	var p hypervisor.Process
	if _, err := fmt.Sscanf(string(b), "%d %d", &p.PID, &p.Start); err != nil || p.PID <= 0 {
		return hypervisor.Process{}, false
	}
	return p, isKeeper(p, dir)
}

// isKeeper reports whether p is alive and the keeper of dir.
func isKeeper(p hypervisor.Process, dir string) bool {
	start, err := hypervisor.StartTime(p.PID)
	if err != nil || start != p.Start {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return false
	}
	args := bytes.Split(b, []byte{0})
	return len(args) > 2 && string(args[1]) == Command && string(args[2]) == DirArg(dir)
}

// Stop ends the VM's keeper, if one runs and it is not this process: a
// SIGTERM, then SIGKILL if it has not let go of its lock within 5s.
// Called by the lifecycle operations that end the VM's QEMU; a keeper
// also leaves by itself once QEMU is gone.
func Stop(ctx context.Context, dir string) error {
	p, ok := Find(dir)
	if !ok || p.PID == os.Getpid() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("keeper: stop %d: %w", p.PID, err)
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if waitGone(wait, p, dir) == nil {
		return nil
	}
	if isKeeper(p, dir) {
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
	return waitGone(ctx, p, dir)
}

// waitGone waits until p has exited, its files closed (and with them
// its lock): a zombie, or gone. Its command line empties earlier, before
// the kernel closes its files, so isKeeper alone would say so too soon.
func waitGone(ctx context.Context, p hypervisor.Process, dir string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for running(p) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Notify tells the VM's keeper to look at the VM again (SIGHUP), after a
// change of what its duties enforce. No keeper is no error: there is
// nothing to tell, and the next keeper reads the current state.
func Notify(dir string) error {
	p, ok := Find(dir)
	if !ok {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGHUP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("keeper: notify %d: %w", p.PID, err)
	}
	return nil
}

// Orphan is a keeper process that keeps no VM of its state directory.
type Orphan struct {
	PID int
	Dir string
}

// Orphans lists keeper processes of this user whose VM directory is gone
// or names another keeper in its pid file (keep says which directories
// belong to a running VM; nil = any existing one).
func Orphans(keep func(dir string) bool) []Orphan {
	var out []Orphan
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		if len(args) < 3 || string(args[1]) != Command {
			continue
		}
		dir, ok := strings.CutPrefix(string(args[2]), "--dir=")
		if !ok {
			continue
		}
		owner, found := Find(dir)
		_, statErr := os.Stat(dir)
		if found && owner.PID == pid && statErr == nil && (keep == nil || keep(dir)) {
			continue
		}
		out = append(out, Orphan{PID: pid, Dir: dir})
	}
	return out
}

// KillOrphan ends an orphan found by Orphans, if it still is one.
func KillOrphan(o Orphan) error {
	start, err := hypervisor.StartTime(o.PID)
	if err != nil {
		return nil
	}
	p := hypervisor.Process{PID: o.PID, Start: start}
	if !isKeeper(p, o.Dir) {
		return nil
	}
	if err := syscall.Kill(o.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// writePidFile records the keeper's identity, replacing the file whole.
func writePidFile(dir string, pid int, start uint64) error {
	tmp := filepath.Join(dir, "."+PidFile+".tmp")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", pid, start), 0o600); err != nil {
		return fmt.Errorf("keeper: pid file: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, PidFile))
}

// removePidFile removes the pid file if it still names this keeper.
func removePidFile(dir string, pid int, start uint64) {
	p := filepath.Join(dir, PidFile)
	b, err := os.ReadFile(p)
	if err == nil && string(b) == fmt.Sprintf("%d %d\n", pid, start) {
		os.Remove(p)
	}
}

// running reports whether p (with its start time) exists and has not yet
// exited: not a zombie.
func running(p hypervisor.Process) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X' {
		return false
	}
	start, err := hypervisor.StartTime(p.PID)
	return err == nil && start == p.Start
}
