package smolvm_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// TestWarmDefault checks the warm default: a VM of the default image and
// machine resumes from the template (made on first use), WithColdBoot or a
// setting the template lacks boots, and Info says which.
func TestWarmDefault(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	warm := newVM(t, ctx, smolvm.VMConfig{})
	began := time.Now()
	startVM(t, ctx, warm)
	info := warm.Info()
	t.Logf("warm start %v (%s from %s)", time.Since(began).Round(time.Millisecond), info.BootPath, info.FromSnapshot)
	if info.BootPath != "snapshot" || !strings.HasPrefix(info.FromSnapshot, "default-") {
		t.Fatalf("default VM: boot path %q from %q; want a resume from the default template", info.BootPath, info.FromSnapshot)
	}
	if got := run(t, ctx, warm, "hostname").Stdout; got != warm.ID()+"\n" {
		t.Errorf("warm VM's hostname %q, want its id", got)
	}
	snaps, err := smolvm.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range snaps {
		if s.Name == info.FromSnapshot {
			found = true
			if len(s.Dependents) == 0 || s.Dependents[0] != warm.ID() {
				t.Errorf("template dependents %v, want %s", s.Dependents, warm.ID())
			}
		}
	}
	if !found {
		t.Errorf("template %s not listed in %+v", info.FromSnapshot, snaps)
	}
	warm.Delete(ctx)

	for name, tt := range map[string]struct {
		cfg  smolvm.VMConfig
		opts []smolvm.Option
	}{
		"cold option": {opts: []smolvm.Option{smolvm.WithColdBoot()}},
		"other size":  {cfg: smolvm.VMConfig{MemoryMiB: 640}},
	} {
		vm := newVM(t, ctx, tt.cfg, tt.opts...)
		startVM(t, ctx, vm)
		if got := vm.Info(); got.BootPath != "cold" || got.FromSnapshot != "" {
			t.Errorf("%s: boot path %q from %q, want a cold boot", name, got.BootPath, got.FromSnapshot)
		}
		vm.Delete(ctx)
	}
}

// TestHibernate pauses a VM to disk: its QEMU ends, and a handle of
// another "process" brings it back with its processes and files.
func TestHibernate(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, vm)
	run(t, ctx, vm, "echo kept > /root/disk.txt; echo mem > /dev/shm/mem.txt; "+
		"(i=0; while :; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.2; done) >/dev/null 2>&1 &")
	time.Sleep(2 * time.Second)
	before, _ := strconv.Atoi(strings.TrimSpace(run(t, ctx, vm, "cat /dev/shm/count").Stdout))
	name := vm.Info().Process
	if err := vm.Pause(ctx, smolvm.ToDisk()); err != nil {
		t.Fatalf("hibernate: %v", err)
	}
	if st := vm.Status(); st != smolvm.StateHibernated {
		t.Fatalf("state after Pause(ToDisk) = %s", st)
	}
	if p, ok := hypervisor.Find(name); ok {
		t.Fatalf("QEMU %d still runs for a hibernated VM", p.PID)
	}

	time.Sleep(4 * time.Second) // its clock stands still meanwhile

	// Another process would know the VM only from the state directory.
	again, err := smolvm.FromID(ctx, vm.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := again.Info().BootPath; got != "hibernation" {
		t.Errorf("boot path after resume %q, want hibernation", got)
	}
	res := run(t, ctx, again, "cat /root/disk.txt /dev/shm/mem.txt; sleep 1; cat /dev/shm/count")
	lines := strings.Fields(res.Stdout)
	if len(lines) != 3 || lines[0] != "kept" || lines[1] != "mem" {
		t.Fatalf("after resume: %+v", res)
	}
	if after, _ := strconv.Atoi(lines[2]); after <= before {
		t.Errorf("counter %d after resume, %d before: the process did not come back", after, before)
	}
	guestNow, _ := strconv.ParseInt(strings.TrimSpace(run(t, ctx, again, "date +%s").Stdout), 10, 64)
	if d := time.Now().Unix() - guestNow; d > 2 || d < -2 {
		t.Errorf("guest clock %d s off the host's after the hibernation", d)
	}
}
