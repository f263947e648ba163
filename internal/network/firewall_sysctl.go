package network

import (
	"bytes"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// setSysctl writes val to /proc/sys/<key> of the Firewall's namespace,
// unless it already holds val (writing ip_forward resets every device's
// forwarding setting, so an unneeded write is not harmless).
func (f *Firewall) setSysctl(key, val string) error {
	path := "/proc/sys/" + key
	return inNetNS(f.netns, func() error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(cur)) == val {
			return nil
		}
		return os.WriteFile(path, []byte(val), 0o644)
	})
}

// inNetNS runs fn on an OS thread that is in the network namespace open as
// fd (0 = the caller's namespace, where fn runs directly). /proc/sys/net
// shows the namespace of the thread that opens it.
func inNetNS(fd int, fn func() error) error {
	if fd == 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// A thread left in the other namespace is never unlocked, so it
		// ends with this goroutine instead of running other code.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
