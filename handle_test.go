package smolvm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestDeletedHandle checks that once a VM is deleted every handle on it
// (the one that deleted it, and one from FromID) fails with ErrNotFound
// and never reads as running, also after a new VM took the same id.
func TestDeletedHandle(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	h1 := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, h1)
	h2, err := smolvm.FromID(ctx, h1.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	run(t, ctx, h2, "true") // h2 holds a live connection
	if err := h1.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "f")
	calls := []struct {
		name string
		call func(*smolvm.VM) error
	}{
		{"Run", func(v *smolvm.VM) error { _, err := v.Run(ctx, "true"); return err }},
		{"Exec", func(v *smolvm.VM) error { _, err := v.Exec(ctx, "true", smolvm.ExecOptions{}); return err }},
		{"Shell", func(v *smolvm.VM) error {
			_, err := v.Shell(ctx, nil, io.Discard, io.Discard, "xterm", 80, 24, nil)
			return err
		}},
		{"SetEnv", func(v *smolvm.VM) error { _, err := v.SetEnv(ctx, map[string]string{"A": "b"}); return err }},
		{"UnsetEnv", func(v *smolvm.VM) error { _, err := v.UnsetEnv(ctx, "A"); return err }},
		{"Env", func(v *smolvm.VM) error { _, err := v.Env(ctx); return err }},
		{"Upload", func(v *smolvm.VM) error { return v.Upload(ctx, "/etc/hostname", "/tmp/x") }},
		{"Download", func(v *smolvm.VM) error { return v.Download(ctx, "/etc/hostname", local) }},
		{"Expose", func(v *smolvm.VM) error { _, err := v.Expose(ctx, 80, 0); return err }},
		{"Unexpose", func(v *smolvm.VM) error { return v.Unexpose(ctx, "", 8080) }},
		{"Forwards", func(v *smolvm.VM) error { _, err := v.Forwards(ctx); return err }},
		{"Pause", func(v *smolvm.VM) error { return v.Pause(ctx) }},
		{"Resume", func(v *smolvm.VM) error { return v.Resume(ctx) }},
		{"Refresh", func(v *smolvm.VM) error { return v.Refresh(ctx) }},
		{"Stop", func(v *smolvm.VM) error { return v.Stop(ctx, time.Second) }},
		{"Start", func(v *smolvm.VM) error { return v.Start(ctx) }},
	}
	check := func(t *testing.T, handles map[string]*smolvm.VM) {
		for hname, h := range handles {
			for _, c := range calls {
				if err := c.call(h); !errors.Is(err, smolvm.ErrNotFound) {
					t.Errorf("%s.%s: %v, want ErrNotFound", hname, c.name, err)
				}
			}
			if h.CanRunCommands(ctx) {
				t.Errorf("%s.CanRunCommands: true", hname)
			}
			if s := h.Status(); s != smolvm.StateDeleted {
				t.Errorf("%s.Status = %s, want %s", hname, s, smolvm.StateDeleted)
			}
		}
	}
	// h2's first look happens in Status, which must not say running.
	if s := h2.Status(); s == smolvm.StateRunning {
		t.Errorf("a handle of a VM deleted elsewhere says %s", s)
	}
	check(t, map[string]*smolvm.VM{"deleting handle": h1, "other handle": h2})
	if err := h1.Delete(ctx); err != nil {
		t.Errorf("second Delete through the deleting handle: %v, want a no-op", err)
	}
	if err := h2.Delete(ctx); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("Delete through the other handle: %v, want ErrNotFound", err)
	}

	// A new VM with the id is not the stale handles' VM.
	h3, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: h1.ID()})
	if err != nil {
		t.Fatal(err)
	}
	defer h3.Delete(context.WithoutCancel(ctx))
	h4, err := smolvm.FromID(ctx, h1.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer h4.Close()
	if err := h4.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	h5, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: h1.ID()})
	if err != nil {
		t.Fatal(fmt.Errorf("re-create: %w", err))
	}
	defer h5.Delete(context.WithoutCancel(ctx))
	check(t, map[string]*smolvm.VM{"handle of the first VM": h2, "handle of the second VM": h4})
	if s := h5.Status(); s != smolvm.StateCreated {
		t.Errorf("the VM now holding the id: %s, want %s (touched by stale handles?)", s, smolvm.StateCreated)
	}
}
