package smolvm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// TestQEMUConfined checks what a guest that escaped QEMU would be: not
// root, under the seccomp filter, with no path into the state directory.
// The VM lives in a state directory whose path has a comma (QEMU's option
// separator) and is long enough that its QMP socket path cannot be a UNIX
// socket address, with an id of the longest valid length: it must still
// boot, pause and resume.
func TestQEMUConfined(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 3*time.Minute)
	home := filepath.Join(t.TempDir(), "a,b=c", strings.Repeat("long-", 12))
	id := strings.Repeat("x", 63)
	if n := len(filepath.Join(home, "vms", id, "qmp.sock")); n <= 108 {
		t.Fatalf("test setup: socket path is %d bytes, want more than fits sun_path", n)
	}
	vm := newVM(t, ctx, smolvm.VMConfig{ID: id}, smolvm.WithHome(home))
	startVM(t, ctx, vm)
	if err := vm.Pause(ctx); err != nil {
		t.Fatalf("pause through QMP at a long path: %v", err)
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if res := run(t, ctx, vm, "echo ok"); res.Stdout != "ok\n" {
		t.Fatalf("run after resume: %+v", res)
	}

	pid := vm.Info().PID
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	field := func(name string) string {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				return strings.Join(strings.Fields(v), " ")
			}
		}
		return ""
	}
	if got := field("Seccomp"); got != "2" {
		t.Errorf("QEMU Seccomp = %q, want 2 (filter mode)", got)
	}
	if os.Geteuid() == 0 {
		uids := strings.Fields(field("Uid"))
		if len(uids) == 0 || uids[0] == "0" || uids[1] == "0" {
			t.Errorf("QEMU runs as uid %v; want an unprivileged user", uids)
		}
		if g := field("Groups"); g != "" {
			t.Errorf("QEMU has supplementary groups %q", g)
		}
	}
	// Its command line names no path of the state directory: it reaches
	// its files only through the descriptors it was given.
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if strings.Contains(string(cmdline), home) {
		t.Errorf("QEMU's command line names the state directory: %q", cmdline)
	}
}

// TestConcurrentStartDelete starts and deletes one VM at the same time
// through two handles, in both orders: the VM ends up wholly gone, never
// half-deleted with a QEMU still running.
func TestConcurrentStartDelete(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	for _, startFirst := range []bool{true, false} {
		vm := newVM(t, ctx, smolvm.VMConfig{})
		other, err := smolvm.FromID(ctx, vm.ID())
		if err != nil {
			t.Fatal(err)
		}
		name := vm.Info().Process
		var wg sync.WaitGroup
		var startErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			startErr = vm.Start(ctx)
		}()
		go func() {
			defer wg.Done()
			if startFirst {
				time.Sleep(300 * time.Millisecond) // mid-boot
			}
			if err := other.Delete(ctx); err != nil {
				t.Errorf("delete: %v", err)
			}
		}()
		wg.Wait()
		if startErr != nil && !errors.Is(startErr, smolvm.ErrNotFound) {
			t.Errorf("start beside delete: %v, want success or ErrNotFound", startErr)
		}
		if p, ok := hypervisor.Find(name); ok {
			t.Errorf("QEMU %d runs after delete", p.PID)
		}
		if _, err := smolvm.FromID(ctx, vm.ID()); !errors.Is(err, smolvm.ErrNotFound) {
			t.Errorf("FromID after delete: %v, want ErrNotFound", err)
		}
		if _, err := os.Stat(vm.DataDir()); !os.IsNotExist(err) {
			t.Errorf("data dir after delete: %v", err)
		}
	}
}
