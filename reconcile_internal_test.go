package smolvm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// TestInterruptedStart plays a start whose process was killed after QEMU
// was launched but before the row recorded it: the row says stopped, a
// QEMU with the VM's name runs. While someone holds the VM's lock (a start
// under way) neither List nor doctor touches it; once nobody does, the
// next look removes it, and the VM starts again normally.
func TestInterruptedStart(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil || os.Getenv("SMOLVM_AGENT") == "" {
		t.Skip("VM test skipped: needs qemu-system-x86_64 and the test environment of TestMain")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(context.Background())
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	info := vm.Info()
	name := info.Process
	if err := vm.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		row.State, row.PID, rt.ProcStart = string(StateStopped), 0, 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	unlock, err := flock.Lock(ctx, vm.paths.lock(), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := List(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := hypervisor.Find(name); !ok {
		t.Fatal("List killed the QEMU of a VM whose start holds the lock")
	}
	left, err := FindLeftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range left {
		if l.Kind == "process" && l.vm == name {
			t.Errorf("doctor calls the QEMU of a VM being started a leftover: %+v", l)
		}
	}
	unlock()

	if _, err := List(ctx); err != nil {
		t.Fatal(err)
	}
	if p, ok := hypervisor.Find(name); ok {
		t.Errorf("QEMU %d of the interrupted start still runs", p.PID)
	}
	if network.TAPExists(info.Network.TAP) {
		t.Errorf("TAP %s of the interrupted start is still there", info.Network.TAP)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatalf("start after an interrupted start: %v", err)
	}
	if res, err := vm.Run(ctx, "true"); err != nil || !res.OK() {
		t.Fatalf("run: %v %+v", err, res)
	}
}

// TestInterruptedCreate plays a create killed after it wrote the VM's row
// but before it finished: nobody holds the lock, the row is incomplete.
// The VM is then gone at the next look, and its id can be used again.
func TestInterruptedCreate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	home := t.TempDir()
	s := newSettings([]Option{WithHome(home)})
	st, err := openStore(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateVM(ctx, store.VM{ID: "half", State: string(StateCreated), Config: []byte(`{"id":"half"}`)}); err != nil {
		t.Fatal(err)
	}
	p := newPaths(home, "half")
	os.MkdirAll(p.dir, 0o700)
	os.WriteFile(p.disk(), []byte("partial"), 0o600)

	// While its creator holds the lock, it is a VM being made.
	unlock, err := flock.Lock(ctx, p.lock(), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if vms, err := List(ctx, WithHome(home)); err != nil || len(vms) != 1 {
		t.Fatalf("list during the create: %v, %v", vms, err)
	}
	unlock()

	vms, err := List(ctx, WithHome(home))
	if err != nil || len(vms) != 0 {
		t.Fatalf("list after the interrupted create = %v, %v; want nothing", vms, err)
	}
	if _, err := os.Stat(p.dir); !os.IsNotExist(err) {
		t.Errorf("directory of the interrupted create is still there: %v", err)
	}
	if _, err := FromID(ctx, "half", WithHome(home)); !errors.Is(err, ErrNotFound) {
		t.Errorf("FromID after the interrupted create: %v, want ErrNotFound", err)
	}
}
