package smolvm_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestKeptDisk checks that a disk kept by RetainDiskOnDelete survives a
// later create with its id, boots again with ReuseDisk, and goes only when
// removed on purpose (SDK and CLI), after which the id is free again.
func TestKeptDisk(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	id := fmt.Sprintf("kept-%d", time.Now().UnixNano())
	vm := newVM(t, ctx, smolvm.VMConfig{ID: id, RetainDiskOnDelete: true})
	startVM(t, ctx, vm)
	run(t, ctx, vm, "echo precious > /root/f; sync")
	disk := vm.Info().Disk
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { smolvm.RemoveKeptDisk(ctx, id) })

	_, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: id})
	if !errors.Is(err, smolvm.ErrAlreadyExists) || !strings.Contains(err.Error(), disk) || !strings.Contains(err.Error(), "--reuse-disk") {
		t.Fatalf("create over a kept disk: %v, want ErrAlreadyExists naming %s and how to reuse it", err, disk)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the kept disk is gone after a create with its id: %v", err)
	}
	leftovers, err := smolvm.FindLeftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leftovers {
		if strings.Contains(l.Name, id) {
			t.Errorf("the kept disk is reported as a leftover: %+v", l)
		}
	}
	if err := smolvm.RemoveKeptDisk(ctx, "no-such-"+id); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("RemoveKeptDisk of an id without one: %v, want ErrNotFound", err)
	}
	if err := smolvm.RemoveKeptDisk(ctx, "../"+id); !errors.Is(err, smolvm.ErrInvalid) {
		t.Errorf("RemoveKeptDisk of a path: %v, want ErrInvalid", err)
	}

	reused := newVM(t, ctx, smolvm.VMConfig{ID: id, ReuseDisk: true})
	if err := smolvm.RemoveKeptDisk(ctx, id); !errors.Is(err, smolvm.ErrAlreadyExists) {
		t.Errorf("RemoveKeptDisk while a VM uses the disk: %v, want ErrAlreadyExists", err)
	}
	startVM(t, ctx, reused)
	if got := run(t, ctx, reused, "cat /root/f").Stdout; got != "precious\n" {
		t.Errorf("reused disk: /root/f = %q", got)
	}
	if !reused.Info().Config.RetainDiskOnDelete {
		t.Error("a reused disk is not kept again on delete")
	}
	if err := reused.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the reused disk was not kept: %v", err)
	}

	// Removing it through the CLI frees the id.
	if out, err := exec.CommandContext(ctx, testEnv.bin, "delete", "--disk", id).CombinedOutput(); err != nil {
		t.Fatalf("smolvm delete --disk: %v\n%s", err, out)
	}
	if _, err := os.Stat(disk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("disk after delete --disk: %v", err)
	}
	if err := smolvm.RemoveKeptDisk(ctx, id); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("RemoveKeptDisk twice: %v, want ErrNotFound", err)
	}
	again := newVM(t, ctx, smolvm.VMConfig{ID: id})
	if err := again.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: id, ReuseDisk: true}); !errors.Is(err, smolvm.ErrInvalid) {
		t.Errorf("ReuseDisk without a kept disk: %v, want ErrInvalid", err)
	}
}
