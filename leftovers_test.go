package smolvm_test

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// TestLeftovers plants one of each kind of debris a crash can leave and
// checks that doctor's finder sees it and its fixer removes it.
func TestLeftovers(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("leftover test skipped: needs root for TAP devices and nftables")
	}
	ctx := testContext(t, 2*time.Minute)
	home := t.TempDir()
	const ghost = "ghost-vm"
	tap := network.TAPName("ghost-instance")

	// A VM directory with no row.
	dir := filepath.Join(home, "vms", ghost)
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "console.log"), []byte("x"), 0o600)
	// A QEMU process of a VM the database does not know (paused, -S).
	qemu := exec.Command("qemu-system-x86_64", "-name", hypervisor.NameArg(hypervisor.Name(ghost, "0123456789")), "-machine", "microvm",
		"-nodefaults", "-nographic", "-S", "-pidfile", filepath.Join(dir, "vm.pid"), "-daemonize")
	if out, err := qemu.CombinedOutput(); err != nil {
		t.Fatalf("qemu: %v: %s", err, out)
	}
	// A TAP device and firewall rules nobody owns.
	if err := network.CreateTAP(network.TAP{Name: tap, Host: netip.MustParsePrefix("198.19.255.253/30"), Alias: network.AliasPrefix + dir}); err != nil {
		t.Fatal(err)
	}
	fw := network.NewFirewall(0)
	if err := fw.AddVM(network.VMRules{ID: ghost, TAP: tap, GuestIP: netip.MustParseAddr("198.19.255.254"), Egress: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // in case the test fails half-way
		network.DeleteTAP(tap)
		fw.RemoveVM(ghost)
	})

	planted := func(ls []smolvm.Leftover) map[string]smolvm.Leftover {
		out := map[string]smolvm.Leftover{}
		for _, l := range ls {
			if l.Name == tap || l.Name == "vm:"+ghost || l.Name == dir || l.Kind == "process" {
				out[l.Kind] = l
			}
		}
		return out
	}
	found, err := smolvm.FindLeftovers(ctx, smolvm.WithHome(home))
	if err != nil {
		t.Fatal(err)
	}
	mine := planted(found)
	for _, kind := range []string{"process", "tap", "rule", "dir"} {
		if _, ok := mine[kind]; !ok {
			t.Errorf("leftover %s not found; found %+v", kind, found)
		}
	}
	var fix []smolvm.Leftover
	for _, l := range mine {
		fix = append(fix, l)
	}
	if err := smolvm.RemoveLeftovers(ctx, fix); err != nil {
		t.Fatal(err)
	}
	again, err := smolvm.FindLeftovers(ctx, smolvm.WithHome(home))
	if err != nil {
		t.Fatal(err)
	}
	if left := planted(again); len(left) != 0 {
		t.Fatalf("still there after the fix: %+v", left)
	}
}

// TestSnapshotLeftovers plants what a killed capture and a lost row leave
// under snapshots/ and checks that doctor's finder sees both.
func TestSnapshotLeftovers(t *testing.T) {
	ctx := testContext(t, time.Minute)
	home := t.TempDir()
	if _, err := smolvm.List(ctx, smolvm.WithHome(home)); err != nil { // makes the state directory
		t.Fatal(err)
	}
	var planted []string
	for _, name := range []string{".tmp-killed", "lost-row"} {
		dir := filepath.Join(home, "snapshots", name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "memory"), []byte("x"), 0o600)
		planted = append(planted, dir)
	}
	found, err := smolvm.FindLeftovers(ctx, smolvm.WithHome(home))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range planted {
		ok := false
		for _, l := range found {
			ok = ok || (l.Kind == "dir" && l.Name == dir)
		}
		if !ok {
			t.Errorf("%s not found as a leftover: %+v", dir, found)
		}
	}
	if err := smolvm.RemoveLeftovers(ctx, found); err != nil {
		t.Fatal(err)
	}
	for _, dir := range planted {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s still there after the fix: %v", dir, err)
		}
	}
}
