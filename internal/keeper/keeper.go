// Package keeper is the host process that carries a running VM's duties
// (its lifetime, its DNS resolver...) after the process that started it
// exited: one keeper per running VM, detached like the VM's QEMU, which
// exits on its own when that QEMU does.
//
// The keeper is the smolvm CLI in a hidden mode (smolvm keeper --dir
// VMDIR); the duties are wired there. This package spawns it, finds it by
// exact identity (its pid file holds pid and start time, checked against
// /proc, and its command line names the VM's directory), stops it,
// notifies it of changes (SIGHUP) and runs the duties inside it.
package keeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
)

// Files of the keeper in the VM's directory.
const (
	LockFile = "keeper.lock" // held by the live keeper: liveness without a pid
	PidFile  = "keeper.pid"  // "PID START": which process it is
	LogFile  = "keeper.log"  // its stdout and stderr
)

// Command is the hidden CLI command that runs a keeper.
const Command = "keeper"

// VM is what a duty gets: the VM it keeps, and news of its changes.
type VM struct {
	ID   string // the VM's id
	Home string // the state directory (smolvm.WithHome)
	Dir  string // the VM's own directory, Home/vms/ID
	// Log is the keeper's logger (its log file), with the duty's name.
	Log *slog.Logger

	changed chan struct{}
}

// Changed receives when something asked the keeper to look at the VM
// again (Notify: a changed lifetime, policy...). Each duty has its own
// channel; a burst of notifications may arrive as one.
func (v VM) Changed() <-chan struct{} { return v.changed }

// Duty is one job the keeper does for as long as the VM runs. It runs
// until ctx ends (the VM's QEMU exited, or the keeper is stopped). An
// error is logged and the duty started again after a backoff; nil means
// it has nothing more to do. A duty never ends the others.
type Duty func(ctx context.Context, vm VM) error

// Config is what Run needs.
type Config struct {
	// Dir is the VM's directory: Home/vms/ID.
	Dir string
	// QEMU and Name identify the VM process to watch (hypervisor.Alive).
	QEMU hypervisor.Process
	Name string
	// Duties by name (the name is in their log lines).
	Duties map[string]Duty
	// Logger; nil = discard.
	Logger *slog.Logger
	// Grace bounds how long duties get to return once ctx ends (a duty
	// may be ending the VM, which ends ctx); 0 = 5 minutes.
	Grace time.Duration
}

// ErrRunning is returned by Run when another keeper keeps the VM.
var ErrRunning = errors.New("keeper: another keeper keeps this VM")

// Run keeps the VM: it takes the keeper lock (ErrRunning if another holds
// it), writes the pid file, runs the duties and returns once the VM's
// QEMU has exited, or on SIGTERM/SIGINT or ctx's end. SIGHUP is passed to
// the duties as Changed.
func Run(ctx context.Context, c Config) error {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if c.Grace <= 0 {
		c.Grace = 5 * time.Minute
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	// Signals first: a SIGHUP's default is to end the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	unlock, err := tryLock(filepath.Join(dir, LockFile))
	if err != nil {
		return err
	}
	defer unlock()
	me, err := hypervisor.StartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("keeper: own start time: %w", err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !hypervisor.Alive(c.QEMU, c.Name) {
		log.Info("the VM does not run; nothing to keep")
		return nil
	}
	go watchExit(ctx, cancel, c.QEMU, c.Name)

	id := filepath.Base(dir)
	home := filepath.Dir(filepath.Dir(dir))
	var wg sync.WaitGroup
	var chans []chan struct{}
	for name, d := range c.Duties {
		ch := make(chan struct{}, 1)
		chans = append(chans, ch)
		vm := VM{ID: id, Home: home, Dir: dir, Log: log.With("duty", name), changed: ch}
		wg.Add(1)
		go func() {
			defer wg.Done()
			runDuty(ctx, name, d, vm)
		}()
	}
	// Last: whoever finds the keeper by its pid file (Spawn waits for
	// that) finds its duties running and its signals handled.
	if err := writePidFile(dir, os.Getpid(), me); err != nil {
		cancel(err)
	}
	defer removePidFile(dir, os.Getpid(), me)
	log.Info("keeping the VM", "vm", id, "qemu", c.QEMU.PID, "duties", len(c.Duties))
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case s := <-sigs:
			if s == syscall.SIGHUP {
				for _, ch := range chans {
					select {
					case ch <- struct{}{}:
					default: // one pending is enough
					}
				}
				continue
			}
			log.Info("told to stop", "signal", s.String())
			cancel(errors.New("stopped by " + s.String()))
		}
	}
	log.Info("stopping", "why", context.Cause(ctx))
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.Grace):
		log.Warn("duties did not return in time; leaving", "grace", c.Grace)
	}
	return nil
}

// runDuty runs d until ctx ends, again after each error with a backoff
// (1s doubling to 30s; back to 1s after a minute of running well).
func runDuty(ctx context.Context, name string, d Duty, vm VM) {
	backoff := time.Second
	for {
		began := time.Now()
		err := safeRun(ctx, d, vm)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			vm.Log.Info("duty done")
			return
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		vm.Log.Warn("duty failed; restarting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// safeRun turns a duty's panic into its error: one broken duty must not
// take the others (and the VM's DNS, say) down with the process.
func safeRun(ctx context.Context, d Duty, vm VM) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return d(ctx, vm)
}

// watchExit cancels ctx once the VM process has exited: on its pidfd when
// the kernel has them (no polling, no race with a recycled pid: the fd
// names the process, checked once after opening), else by looking every
// second.
func watchExit(ctx context.Context, cancel context.CancelCauseFunc, p hypervisor.Process, name string) {
	gone := errors.New("the VM process exited")
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err == nil {
		defer unix.Close(fd)
		if !hypervisor.Alive(p, name) { // the pid was recycled before we opened it
			cancel(gone)
			return
		}
		for ctx.Err() == nil {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 1000)
			if err != nil && !errors.Is(err, unix.EINTR) {
				break // fall back to looking
			}
			if n > 0 {
				cancel(gone)
				return
			}
		}
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !hypervisor.Alive(p, name) {
				cancel(gone)
				return
			}
		}
	}
}

// tryLock takes the keeper lock without waiting.
func tryLock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keeper: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrRunning
		}
		return nil, fmt.Errorf("keeper: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
