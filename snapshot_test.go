package smolvm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
)

// snapshotMiB is the guest memory of the snapshot tests: a memory
// snapshot copies all of it, so less is quicker.
const snapshotMiB = 256

// takeSnapshot snapshots vm as name and removes the snapshot when the
// test ends (after the VMs made from it, which register their cleanup
// later).
func takeSnapshot(t *testing.T, ctx context.Context, vm *smolvm.VM, name string, opts ...smolvm.SnapshotOption) *smolvm.SnapshotInfo {
	t.Helper()
	began := time.Now()
	info, err := vm.Snapshot(ctx, name, opts...)
	if err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	t.Logf("snapshot %s of %s: %s (paused %s), %d MiB on disk", name, vm.ID(), time.Since(began).Round(time.Millisecond),
		info.Paused.Round(time.Millisecond), info.SizeBytes>>20)
	t.Cleanup(func() {
		if err := smolvm.RemoveSnapshot(context.Background(), name); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			t.Errorf("cleanup: remove snapshot %s: %v", name, err)
		}
	})
	return info
}

// cleanupVM deletes vm when the test ends, printing its console if the
// test failed.
func cleanupVM(t *testing.T, vm *smolvm.VM) {
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(vm.Info().ConsoleLog); err == nil {
				t.Logf("console of %s:\n%s", vm.ID(), b)
			}
		}
		if err := vm.Delete(context.Background()); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			t.Errorf("cleanup delete %s: %v", vm.ID(), err)
		}
	})
}

// restore makes a running VM from the snapshot name, deleted at the end.
func restore(t *testing.T, ctx context.Context, name string, opts ...smolvm.Option) *smolvm.VM {
	t.Helper()
	began := time.Now()
	vm, err := smolvm.FromSnapshot(ctx, name, opts...)
	if err != nil {
		t.Fatalf("from snapshot %s: %v", name, err)
	}
	cleanupVM(t, vm)
	info := vm.Info()
	t.Logf("from snapshot %s: %s running in %s (boot path %s)", name, vm.ID(), time.Since(began).Round(time.Millisecond), info.BootPath)
	if info.FromSnapshot != name {
		t.Errorf("%s: VMInfo.FromSnapshot = %q, want %q", vm.ID(), info.FromSnapshot, name)
	}
	return vm
}

func snapshotVM(t *testing.T, ctx context.Context) *smolvm.VM {
	t.Helper()
	vm := newVM(t, ctx, smolvm.VMConfig{MemoryMiB: snapshotMiB})
	startVM(t, ctx, vm)
	return vm
}

func out(t *testing.T, ctx context.Context, vm *smolvm.VM, cmd string) string {
	t.Helper()
	res := run(t, ctx, vm, cmd)
	if res.ExitCode != 0 {
		t.Fatalf("%s: %q: exit %d: %s", vm.ID(), cmd, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

// counter reads the guest's counting process's count.
func counter(t *testing.T, ctx context.Context, vm *smolvm.VM) int {
	t.Helper()
	s := out(t, ctx, vm, "cat /dev/shm/count")
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: count %q: %v", vm.ID(), s, err)
	}
	return n
}

// checkCounting fails unless the count goes up, and returns it.
func checkCounting(t *testing.T, ctx context.Context, vm *smolvm.VM) int {
	t.Helper()
	a := counter(t, ctx, vm)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		if b := counter(t, ctx, vm); b > a {
			return b
		}
	}
	t.Fatalf("%s: the counter does not count: stuck at %d", vm.ID(), a)
	return 0
}

// checkClock fails unless the guest's clock is within a few seconds of
// the host's.
func checkClock(t *testing.T, ctx context.Context, vm *smolvm.VM) {
	t.Helper()
	before := time.Now().Unix()
	s := out(t, ctx, vm, "date +%s")
	after := time.Now().Unix()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s: date %q: %v", vm.ID(), s, err)
	}
	if n < before-3 || n > after+3 {
		t.Errorf("%s: guest clock %d, host clock %d..%d: off by more than 3 s", vm.ID(), n, before, after)
	}
}

// countLoop counts in the background, in a tmpfs: its value lives in
// memory only.
const countLoop = `nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.2; done' >/dev/null 2>&1 </dev/null &`

// TestSnapshotRestore is the restore test: a VM made from a
// memory snapshot resumes where it was taken, with the processes and the
// files in memory and on disk; the source runs on unchanged.
func TestSnapshotRestore(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	src := snapshotVM(t, ctx)
	out(t, ctx, src, countLoop+" echo on disk > /root/disk.txt; echo in memory > /dev/shm/mem.txt; sync")
	// Far enough from 0 that a count begun anew cannot pass for it.
	for n := checkCounting(t, ctx, src); n < 20; n = counter(t, ctx, src) {
		time.Sleep(time.Second)
	}

	atSnap := counter(t, ctx, src)
	snapAt := time.Now()
	info := takeSnapshot(t, ctx, src, "restore")
	afterSnap := counter(t, ctx, src)
	if info.DiskOnly || info.SourceVM != src.ID() || info.MemoryMiB != snapshotMiB || len(info.Dependents) != 0 {
		t.Errorf("snapshot info: %+v", info)
	}

	// The source runs on: still counting, its files as they were.
	if n := checkCounting(t, ctx, src); n <= afterSnap {
		t.Errorf("source: count %d after the snapshot, was %d", n, afterSnap)
	}
	if got := out(t, ctx, src, "cat /root/disk.txt /dev/shm/mem.txt"); got != "on disk\nin memory" {
		t.Errorf("source files after the snapshot: %q", got)
	}
	// The clock check below would pass on a clone that kept the capture's
	// time if the restore came right after it.
	time.Sleep(time.Until(snapAt.Add(8 * time.Second)))

	restoreBegan := time.Now()
	vm := restore(t, ctx, "restore")
	if bp := vm.Info().BootPath; bp != "snapshot" {
		t.Errorf("boot path %q, want snapshot", bp)
	}
	if _, err := os.Stat(vm.Info().Disk); err != nil {
		t.Errorf("VMInfo.Disk of a VM from a snapshot: %v", err)
	}
	checkClock(t, ctx, vm)
	first := counter(t, ctx, vm)
	// It resumes the count where the snapshot took it: not at 0 (a new
	// process), nor where the source is now (it counted on meanwhile).
	// The loop counts at most once per 0.2 s since the clone resumed.
	if most := afterSnap + int(time.Since(restoreBegan)/(200*time.Millisecond)) + 2; first < atSnap || first > most {
		t.Errorf("clone's count is %d; the source's was %d..%d at the snapshot, so at most %d now", first, atSnap, afterSnap, most)
	}
	t.Logf("count: %d..%d at the snapshot, %d in the clone", atSnap, afterSnap, first)
	if n := checkCounting(t, ctx, vm); n <= first {
		t.Errorf("clone: count %d, was %d", n, first)
	}
	if got := out(t, ctx, vm, "cat /root/disk.txt /dev/shm/mem.txt"); got != "on disk\nin memory" {
		t.Errorf("clone's files: %q", got)
	}
	// The clone writes its own disk: the source does not see it.
	out(t, ctx, vm, "echo clone > /root/disk.txt; sync")
	if got := out(t, ctx, src, "cat /root/disk.txt"); got != "on disk" {
		t.Errorf("source's file after the clone wrote its own: %q", got)
	}
	got, err := smolvm.GetSnapshot(ctx, "restore")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Dependents, []string{vm.ID()}) {
		t.Errorf("snapshot dependents %v, want [%s]", got.Dependents, vm.ID())
	}
}

// identityOf is what must differ between two machines.
type identityOf struct {
	id, ip, mac, hostname, hostKey, machineID, random string
}

func identity(t *testing.T, ctx context.Context, vm *smolvm.VM) identityOf {
	t.Helper()
	hostKey, err := os.ReadFile(filepath.Join(vm.DataDir(), "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	// One command: the random bytes are read right after the restore.
	lines := strings.Split(out(t, ctx, vm, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo;"+
		" cat /sys/class/net/eth0/address; hostname; cat /etc/machine-id 2>/dev/null || echo none"), "\n")
	if len(lines) != 4 {
		t.Fatalf("%s: identity: %q", vm.ID(), lines)
	}
	return identityOf{
		id: vm.ID(), ip: vm.IP(), hostKey: string(hostKey),
		random: lines[0], mac: lines[1], hostname: lines[2], machineID: lines[3],
	}
}

// TestForkNewMachines forks a VM into two: source and clones are three
// machines, none of which shares an identity with another, and a clone
// accepts only its own client key.
func TestForkNewMachines(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	src := snapshotVM(t, ctx)
	out(t, ctx, src, countLoop)
	before := identity(t, ctx, src)

	began := time.Now()
	kids, err := src.Fork(ctx, 2)
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	for _, k := range kids {
		cleanupVM(t, k)
	}
	t.Logf("fork into %d: %s", len(kids), time.Since(began).Round(time.Millisecond))
	if len(kids) != 2 {
		t.Fatalf("fork made %d VMs, want 2", len(kids))
	}
	ids := []identityOf{identity(t, ctx, kids[0]), identity(t, ctx, kids[1]), identity(t, ctx, src)}
	for _, i := range ids {
		t.Logf("%+v", i)
	}
	if ids[2].machineID != before.machineID || ids[2].hostname != before.hostname || ids[2].mac != before.mac {
		t.Errorf("the source changed under the fork: %+v, was %+v", ids[2], before)
	}
	for _, field := range []struct {
		name string
		get  func(identityOf) string
	}{
		{"id", func(i identityOf) string { return i.id }},
		{"IP", func(i identityOf) string { return i.ip }},
		{"MAC", func(i identityOf) string { return i.mac }},
		{"hostname", func(i identityOf) string { return i.hostname }},
		{"SSH host key", func(i identityOf) string { return i.hostKey }},
		{"machine-id", func(i identityOf) string { return i.machineID }},
		{"urandom", func(i identityOf) string { return i.random }},
	} {
		seen := map[string]string{}
		for _, i := range ids {
			v := field.get(i)
			if other, ok := seen[v]; ok {
				t.Errorf("%s and %s have the same %s %q", other, i.id, field.name, v)
			}
			seen[v] = i.id
		}
	}
	for _, k := range kids {
		info := k.Info()
		if info.FromSnapshot == "" || info.BootPath != "snapshot" {
			t.Errorf("%s: from snapshot %q, boot path %q", k.ID(), info.FromSnapshot, info.BootPath)
		}
		if got := out(t, ctx, k, "hostname"); got != k.ID() {
			t.Errorf("%s: hostname %q", k.ID(), got)
		}
		checkClock(t, ctx, k)
		checkCounting(t, ctx, k)
	}

	// Clone A takes its own client key, and neither B's nor the source's,
	// though all three were in the memory it resumed.
	a := kids[0]
	hostKey := pinnedHostKey(t, a)
	addr := a.Info().Network.SSHAddr
	for _, who := range []*smolvm.VM{a, kids[1], src} {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := guest.Dial(dctx, addr, hostKey, clientKey(t, who))
		cancel()
		switch {
		case who == a && err != nil:
			t.Errorf("%s refuses its own client key: %v", a.ID(), err)
		case who != a && err == nil:
			t.Errorf("%s accepts the client key of %s", a.ID(), who.ID())
		case who != a && !errors.Is(err, guest.ErrAuthFailed):
			t.Errorf("%s with the client key of %s: %v, want an authentication failure", a.ID(), who.ID(), err)
		}
		if c != nil {
			c.Close()
		}
	}
	// The fork's snapshot goes with its last VM.
	name := kids[0].Info().FromSnapshot
	for _, k := range kids {
		if err := k.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := smolvm.GetSnapshot(ctx, name); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("fork's snapshot %s after its VMs were deleted: %v, want not found", name, err)
	}
	if got := out(t, ctx, src, "hostname"); got != src.ID() {
		t.Errorf("source after the fork: hostname %q", got)
	}
}

func pinnedHostKey(t *testing.T, vm *smolvm.VM) ssh.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.DataDir(), "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func clientKey(t *testing.T, vm *smolvm.VM) ssh.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.DataDir(), "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSnapshotDiskOnly: a VM made from a disk-only snapshot boots, on the
// snapshot's disk, with nothing of the source's memory.
func TestSnapshotDiskOnly(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	src := snapshotVM(t, ctx)
	out(t, ctx, src, "echo on disk > /root/disk.txt; echo in memory > /dev/shm/mem.txt; sync")
	info := takeSnapshot(t, ctx, src, "diskonly", smolvm.DiskOnly())
	if !info.DiskOnly {
		t.Errorf("snapshot info: %+v", info)
	}
	vm := restore(t, ctx, "diskonly")
	if bp := vm.Info().BootPath; bp != "cold" {
		t.Errorf("boot path %q, want cold", bp)
	}
	if got := out(t, ctx, vm, "cat /root/disk.txt; cat /dev/shm/mem.txt 2>/dev/null || echo gone"); got != "on disk\ngone" {
		t.Errorf("files of a VM from a disk-only snapshot: %q", got)
	}
	if got := out(t, ctx, vm, "hostname"); got != vm.ID() {
		t.Errorf("hostname %q, want %s", got, vm.ID())
	}
}

// TestRemoveSnapshotInUse: a snapshot is not removed under the VMs made
// from it; once they are gone, it is, files and all.
func TestRemoveSnapshotInUse(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	src := snapshotVM(t, ctx)
	out(t, ctx, src, "echo kept > /root/disk.txt; sync")
	info := takeSnapshot(t, ctx, src, "inuse")
	clone := restore(t, ctx, "inuse")
	// The source may go: the snapshot does not depend on it.
	if err := src.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	err := smolvm.RemoveSnapshot(ctx, "inuse")
	if !errors.Is(err, smolvm.ErrInUse) || !strings.Contains(err.Error(), clone.ID()) {
		t.Fatalf("remove a snapshot a VM uses: %v, want ErrInUse naming %s", err, clone.ID())
	}
	t.Logf("refused: %v", err)
	if got := out(t, ctx, clone, "cat /root/disk.txt; echo more > /root/new.txt; sync; cat /root/new.txt"); got != "kept\nmore" {
		t.Errorf("clone after the refused remove: %q", got)
	}
	// Stopped and started again, it boots on the snapshot's disk.
	if err := clone.Stop(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := smolvm.RemoveSnapshot(ctx, "inuse"); !errors.Is(err, smolvm.ErrInUse) {
		t.Fatalf("remove a snapshot a stopped VM uses: %v, want ErrInUse", err)
	}
	startVM(t, ctx, clone)
	if got := out(t, ctx, clone, "cat /root/disk.txt /root/new.txt"); got != "kept\nmore" {
		t.Errorf("clone after a restart: %q", got)
	}
	if err := clone.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := smolvm.RemoveSnapshot(ctx, "inuse"); err != nil {
		t.Fatalf("remove after its VM was deleted: %v", err)
	}
	if _, err := os.Stat(info.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot dir %s after remove: %v", info.Dir, err)
	}
	if _, err := smolvm.GetSnapshot(ctx, "inuse"); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("get after remove: %v, want not found", err)
	}
}

// TestKilledSnapshot kills `smolvm snapshot create` with SIGKILL at
// moments spread over a capture. Each time the snapshot is either listed
// and complete or not there at all, the source VM still works, and what a
// killed capture left is gone after the next one.
func TestKilledSnapshot(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src := snapshotVM(t, ctx)
	snaps := filepath.Join(testEnv.home, "snapshots")
	// A capture of snapshotMiB takes about 0.1 s: from before it begins to
	// after it ends.
	var delays []time.Duration
	for d := 10 * time.Millisecond; d < 250*time.Millisecond; d += 15 * time.Millisecond {
		delays = append(delays, d)
	}
	delays = append(delays, time.Second)
	for i, d := range delays {
		name := fmt.Sprintf("killed%d", i)
		t.Cleanup(func() { smolvm.RemoveSnapshot(context.Background(), name) })
		cmd := exec.Command(testEnv.bin, "snapshot", "create", src.ID(), name)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(d)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		listed := false
		snapsNow, err := smolvm.ListSnapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snapsNow {
			listed = listed || s.Name == name
		}
		_, dirErr := os.Stat(filepath.Join(snaps, name))
		t.Logf("killed after %s: listed %v, dir %v", d, listed, dirErr == nil)
		if listed {
			for _, f := range []string{"state", "disk.raw", "initrd.cpio"} {
				if _, err := os.Stat(filepath.Join(snaps, name, f)); err != nil {
					t.Errorf("%s is listed, but incomplete: %v", name, err)
				}
			}
		} else if dirErr == nil {
			t.Errorf("%s is not listed, but its directory is there", name)
		}
		// The capture pauses the VM; a killed one must not leave it so for
		// the next command (its own process, as a user's would be).
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var stderr strings.Builder
		alive := exec.CommandContext(rctx, testEnv.bin, "exec", src.ID(), "--", "echo", "alive")
		alive.Stderr = &stderr
		b, err := alive.Output()
		cancel()
		if err != nil || strings.TrimSpace(string(b)) != "alive" {
			src.Refresh(ctx)
			t.Fatalf("source after a capture killed after %s (state %s): %v: %s%s", d, src.Info().State, err, b, stderr.String())
		}
		if stderr.Len() > 0 {
			t.Logf("exec: %s", strings.TrimSpace(stderr.String()))
		}
	}
	// A capture that runs to its end removes what killed ones left.
	takeSnapshot(t, ctx, src, "after-kills")
	ents, _ := os.ReadDir(snaps)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("left behind after a complete snapshot: %s", e.Name())
		}
	}
}

// TestSnapshotChangedKernel: a memory snapshot is refused, at once and
// leaving no VM behind, once the kernel it was taken with changed.
func TestSnapshotChangedKernel(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	img, err := smolvm.DefaultImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if b, err := exec.Command("cp", img.Kernel, kernel).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
	src := newVM(t, ctx, smolvm.VMConfig{MemoryMiB: snapshotMiB, KernelPath: kernel, InitrdPath: img.Initrd, RootfsPath: img.Rootfs, BootArgs: img.BootArgs})
	startVM(t, ctx, src)
	takeSnapshot(t, ctx, src, "changed")
	takeSnapshot(t, ctx, src, "changed-disk", smolvm.DiskOnly())
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(kernel, later, later); err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	vm, err := smolvm.FromSnapshot(ctx, "changed")
	took := time.Since(began)
	if err == nil {
		cleanupVM(t, vm)
		t.Fatal("a VM was made from a memory snapshot of another kernel")
	}
	if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), "kernel changed") {
		t.Errorf("from a snapshot of a changed kernel: %v, want ErrInvalid saying the kernel changed", err)
	}
	t.Logf("refused in %s: %v", took.Round(time.Millisecond), err)
	if took > 5*time.Second {
		t.Errorf("refused after %s: it should be checked before anything starts", took)
	}
	vms, err := smolvm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].ID != src.ID() {
		t.Errorf("VMs after the refused restore: %+v, want only the source", vms)
	}
	// A disk-only snapshot has no memory to disagree with the kernel.
	if _, err := smolvm.GetSnapshot(ctx, "changed-disk"); err != nil {
		t.Fatal(err)
	}
}

// TestKilledHibernate kills `smolvm pause --to-disk` with SIGKILL at
// moments spread over the capture. Each time the VM is either hibernated,
// and resumes with its processes, or running and usable: never frozen
// under a state that says it runs.
func TestKilledHibernate(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	vm := snapshotVM(t, ctx)
	out(t, ctx, vm, countLoop)
	cli := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var stderr strings.Builder
		cmd := exec.CommandContext(cctx, testEnv.bin, args...)
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return string(b), fmt.Errorf("smolvm %q: %w: %s", args, err, stderr.String())
		}
		return string(b), nil
	}
	var delays []time.Duration
	// Once resumed from its hibernation, the VM's RAM goes in the state
	// stream: longer captures.
	for d := 10 * time.Millisecond; d < 500*time.Millisecond; d += 30 * time.Millisecond {
		delays = append(delays, d)
	}
	kill := func(d time.Duration) {
		cmd := exec.Command(testEnv.bin, "pause", "--to-disk", vm.ID())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(d)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	for _, d := range delays {
		kill(d)

		if err := vm.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		state := vm.Info().State
		t.Logf("killed after %s: %s", d, state)
		switch state {
		case smolvm.StateHibernated:
			if _, err := cli("resume", vm.ID()); err != nil {
				t.Fatalf("resume after a hibernation killed after %s: %v", d, err)
			}
		case smolvm.StateRunning:
		default:
			t.Fatalf("state %s after a hibernation killed after %s", state, d)
		}
		if got, err := cli("exec", vm.ID(), "--", "cat", "/dev/shm/count"); err != nil || strings.TrimSpace(got) == "" {
			// What QEMU says of it, and whether a capture marker is left.
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if q, qerr := qemu.DialQMP(qctx, filepath.Join(vm.DataDir(), "qmp.sock")); qerr == nil {
				st, _ := q.Execute("query-status", nil)
				mig, _ := q.Execute("query-migrate", nil)
				t.Logf("QEMU status %s, migration %s", st, mig)
				q.Close()
			}
			cancel()
			_, merr := os.Stat(filepath.Join(vm.DataDir(), "capturing"))
			t.Fatalf("VM after a hibernation killed after %s (%s): %q, %v (capture marker: %v)", d, state, got, err, merr)
		}
	}
	// The next hibernation itself undoes a killed one, whose migration
	// QEMU may still be running.
	for _, d := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		kill(d)
		if _, err := cli("pause", "--to-disk", vm.ID()); err != nil {
			t.Fatalf("hibernate right after one killed after %s: %v", d, err)
		}
		if _, err := cli("resume", vm.ID()); err != nil {
			t.Fatal(err)
		}
	}
	checkCounting(t, ctx, vm)
}
