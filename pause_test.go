package smolvm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestPauseResume(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	if err := vm.Pause(ctx); !errors.Is(err, smolvm.ErrNotRunning) {
		t.Fatalf("pausing a created VM: %v", err)
	}
	startVM(t, ctx, vm)
	run(t, ctx, vm, "echo before > /root/p")
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Refresh(ctx); err != nil || vm.Status() != smolvm.StatePaused {
		t.Fatalf("after pause: %s, %v", vm.Status(), err)
	}
	if _, err := vm.Run(ctx, "true"); !errors.Is(err, smolvm.ErrNotRunning) {
		t.Fatalf("run on a paused VM: %v", err)
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := run(t, ctx, vm, "cat /root/p").Stdout; got != "before\n" {
		t.Fatalf("after resume: %q", got)
	}
	// Stop works from paused too.
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx, 10*time.Second); err != nil || vm.Status() != smolvm.StateStopped {
		t.Fatalf("stop a paused VM: %s, %v", vm.Status(), err)
	}
}
