package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReaper runs the reaper as PID 1 would (this process is made a child
// subreaper, so orphans come to it) and checks that tracked children keep
// their exit statuses while orphans are reaped.
func TestReaper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := NewReaper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			// Each command leaves an orphan behind and exits with its own code.
			cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf("(sleep 0.05) & exit %d", i%7))
			if err := r.Start(cmd); err != nil {
				errs <- err
				return
			}
			err := cmd.Wait()
			r.Done(cmd.Process.Pid)
			var ee *exec.ExitError
			switch {
			case i%7 == 0 && err != nil, i%7 != 0 && (!errors.As(err, &ee) || ee.ExitCode() != i%7):
				errs <- fmt.Errorf("command %d: %v (the reaper stole its status?)", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for zombieChildren() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d orphans left unreaped", zombieChildren())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// zombieChildren counts this process's children that are zombies.
func zombieChildren() int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	self := fmt.Sprint(os.Getpid())
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == self {
			n++
		}
	}
	return n
}
