package keeper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
)

// fakeVM starts a process that carries a VM name as QEMU does (sh keeps
// running: the trailing ':' stops it from exec'ing sleep) and returns it.
func fakeVM(t *testing.T, name string) (hypervisor.Process, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 600; :", hypervisor.NameArg(name))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	start, err := hypervisor.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return hypervisor.Process{PID: cmd.Process.Pid, Start: start}, cmd
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRun: duties run, a failing one is restarted without stopping the
// others, Notify reaches every duty, a second keeper is refused, and the
// keeper leaves once the VM process exits.
func TestRun(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, "vms", "web")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	proc, cmd := fakeVM(t, "smolvm-abc-web")
	var fails, changes atomic.Int32
	seen := make(chan VM, 1)
	duties := map[string]Duty{
		"flaky": func(ctx context.Context, vm VM) error {
			if fails.Add(1) < 2 {
				return errors.New("first run fails")
			}
			<-ctx.Done()
			return nil
		},
		"watch": func(ctx context.Context, vm VM) error {
			seen <- vm
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-vm.Changed():
					changes.Add(1)
				}
			}
		},
		"panics": func(context.Context, VM) error { panic("a bug") },
	}
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{Dir: dir, QEMU: proc, Name: "smolvm-abc-web", Duties: duties, Grace: time.Second})
	}()

	vm := <-seen
	if vm.ID != "web" || vm.Home != home || vm.Dir != dir {
		t.Errorf("duty got %+v, want id web, home %s, dir %s", vm, home, dir)
	}
	waitFor(t, "the lock", func() bool { return Running(dir) })
	if err := Run(context.Background(), Config{Dir: dir, QEMU: proc, Name: "smolvm-abc-web"}); !errors.Is(err, ErrRunning) {
		t.Errorf("second keeper: %v, want ErrRunning", err)
	}
	// What Notify sends (Notify itself finds keepers by their command
	// line, which this test process has not: see TestSpawn).
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the notification", func() bool { return changes.Load() >= 1 })
	waitFor(t, "the flaky duty's restart", func() bool { return fails.Load() >= 2 })

	cmd.Process.Kill() // the VM process exits: the keeper leaves
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("keeper still runs after its VM process exited")
	}
	if Running(dir) {
		t.Error("lock still held")
	}
	if _, err := os.Stat(filepath.Join(dir, PidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left: %v", err)
	}
}

// TestNothingToKeep: a keeper for a VM process that is gone (or a
// recycled pid without the VM's name) leaves at once.
func TestNothingToKeep(t *testing.T) {
	dir := t.TempDir()
	proc, _ := fakeVM(t, "smolvm-abc-other")
	for _, c := range []Config{
		{Dir: dir, QEMU: proc, Name: "smolvm-abc-web"},                                                       // not this VM's
		{Dir: dir, QEMU: hypervisor.Process{PID: proc.PID, Start: proc.Start + 1}, Name: "smolvm-abc-other"}, // a reused pid
	} {
		done := make(chan error, 1)
		go func() { done <- Run(context.Background(), c) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%+v: %v", c.QEMU, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: keeper of no VM does not leave", c.QEMU)
		}
	}
}

// TestFindChecksIdentity: a pid file naming a process that is not the
// keeper of this directory (a recycled pid, another VM's keeper, garbage)
// finds nothing, so Stop and Notify signal nobody.
func TestFindChecksIdentity(t *testing.T) {
	dir := t.TempDir()
	proc, _ := fakeVM(t, "smolvm-abc-web")
	for _, c := range []struct{ name, content string }{
		{"alive, but no keeper of dir", itoa(proc.PID) + " " + utoa(proc.Start) + "\n"},
		{"a recycled pid", itoa(os.Getpid()) + " 1\n"},
		{"garbage", "not a pid file"},
		{"huge", strings.Repeat("1", 1000)},
	} {
		name, content := c.name, c.content
		if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if p, ok := Find(dir); ok {
			t.Errorf("%s: Find = %+v, want nothing", name, p)
		}
		if err := Notify(dir); err != nil {
			t.Errorf("%s: Notify: %v", name, err)
		}
		if err := Stop(context.Background(), dir); err != nil {
			t.Errorf("%s: Stop: %v", name, err)
		}
	}
	if !hypervisor.Alive(proc, "smolvm-abc-web") {
		t.Error("a process that is no keeper was signalled")
	}
}

func TestKeeperEnv(t *testing.T) {
	got := keeperEnv([]string{"PATH=/bin", "API_KEY=s3cret", "SMOLVM_HOME=/h", "SMOLVM_TOKEN=t", "HOME=/root", "XDG_CACHE_HOME=/c", "AWS_SECRET_ACCESS_KEY=x"})
	want := []string{"PATH=/bin", "SMOLVM_HOME=/h", "HOME=/root", "XDG_CACHE_HOME=/c"}
	if len(got) != len(want) {
		t.Fatalf("keeperEnv = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("keeperEnv = %q, want %q", got, want)
		}
	}
}

func itoa(n int) string    { return strconv.Itoa(n) }
func utoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestMain lets the test binary be a keeper (`keeper.test keeper --dir=...`,
// the command line Spawn gives it), with one duty that notes each Notify
// in DIR/changed.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == Command {
		os.Exit(childKeeper(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func childKeeper(args []string) int {
	var c Config
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "--dir":
			c.Dir = v
		case "--vm-pid":
			c.QEMU.PID, _ = strconv.Atoi(v)
		case "--vm-start":
			c.QEMU.Start, _ = strconv.ParseUint(v, 10, 64)
		case "--vm-name":
			c.Name = v
		}
	}
	c.Duties = map[string]Duty{"note": func(ctx context.Context, vm VM) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-vm.Changed():
				f, err := os.OpenFile(filepath.Join(vm.Dir, "changed"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
				if err != nil {
					return err
				}
				f.WriteString("changed\n")
				f.Close()
			}
		}
	}}
	if err := Run(context.Background(), c); err != nil && !errors.Is(err, ErrRunning) {
		return 1
	}
	return 0
}

// TestSpawn: a spawned keeper is detached and found by its identity;
// Notify reaches its duties; Stop ends it; one killed by -9 reads as gone
// at once (its lock goes with it), and a spawn while one runs keeps the
// one there.
func TestSpawn(t *testing.T) {
	dir := t.TempDir()
	proc, _ := fakeVM(t, "smolvm-abc-web")
	o := SpawnOptions{Exe: os.Args[0], Dir: dir, QEMU: proc, Name: "smolvm-abc-web"}
	ctx := context.Background()
	if err := Spawn(ctx, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(ctx, dir) })
	p, ok := Find(dir)
	if !ok || p.PID == os.Getpid() {
		t.Fatalf("Find = %+v, %v", p, ok)
	}
	if sid, _ := unix.Getsid(p.PID); sid != p.PID {
		t.Errorf("keeper's session %d, want its own (%d)", sid, p.PID)
	}
	if err := Spawn(ctx, o); err != nil { // one runs: the new one leaves
		t.Fatal(err)
	}
	if q, _ := Find(dir); q != p {
		t.Errorf("a second spawn replaced the keeper: %+v, was %+v", q, p)
	}
	if err := Notify(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the duty to see the notification", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "changed"))
		return len(b) > 0
	})
	if err := Stop(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if Running(dir) {
		t.Error("keeper still holds its lock after Stop")
	}
	if !hypervisor.Alive(proc, "smolvm-abc-web") {
		t.Error("Stop touched the VM process")
	}

	if err := Spawn(ctx, o); err != nil {
		t.Fatal(err)
	}
	p, _ = Find(dir)
	syscall.Kill(p.PID, syscall.SIGKILL)
	waitFor(t, "the killed keeper's lock to go", func() bool { return !Running(dir) })
	if _, ok := Find(dir); ok {
		t.Error("a killed keeper is still found")
	}
	if err := Spawn(ctx, o); err != nil { // what a look does then
		t.Fatal(err)
	}
	if !Running(dir) {
		t.Error("respawned keeper not running")
	}

	// doctor's view: a keeper whose VM directory is not its own any more.
	p, _ = Find(dir)
	if got := Orphans(nil); slices.ContainsFunc(got, func(o Orphan) bool { return o.PID == p.PID }) {
		t.Errorf("a keeper of its VM is an orphan: %+v", got)
	}
	os.Remove(filepath.Join(dir, PidFile))
	got := Orphans(nil)
	i := slices.IndexFunc(got, func(o Orphan) bool { return o.PID == p.PID })
	if i < 0 || got[i].Dir != dir {
		t.Fatalf("orphans %+v lack keeper %d of %s", got, p.PID, dir)
	}
	if err := KillOrphan(got[i]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the orphan to go", func() bool { return !Running(dir) })
}
