package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper reaps the orphans that end up under PID 1, while leaving alone
// the children that the SSH server starts and waits for itself: both live
// in the one process, and a blind wait4(-1) would steal the server's exit
// statuses.
type Reaper struct {
	mu      sync.Mutex
	tracked map[int]bool
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper() *Reaper { return &Reaper{tracked: map[int]bool{}} }

// Start starts cmd and marks its process as waited for by its starter. The
// lock spans the fork, so the reaper never sees the child untracked.
func (r *Reaper) Start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.tracked[cmd.Process.Pid] = true
	return nil
}

// Done forgets a tracked process once its starter has reaped it.
func (r *Reaper) Done(pid int) {
	r.mu.Lock()
	delete(r.tracked, pid)
	r.mu.Unlock()
}

// Run reaps untracked zombies on every SIGCHLD (and every second, in case
// a signal was coalesced behind a tracked child) until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.reap()
		select {
		case <-ctx.Done():
			return
		case <-sig:
			// Most exits are the server's own commands, which need nothing
			// from us; reap a little later, off the command's hot path.
			time.Sleep(100 * time.Millisecond)
		case <-tick.C:
		}
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		// Look without reaping: a tracked child must stay for its starter.
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		pid := siginfoPid(&info)
		if err != nil || pid == 0 || r.tracked[pid] {
			return
		}
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
}
