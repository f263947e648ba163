package smolvm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestMounts(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	ro, rw := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ro, "input.txt"), []byte("from host\n"), 0o644)
	vm := newVM(t, ctx, smolvm.VMConfig{Mounts: []smolvm.Mount{
		{HostPath: ro, GuestPath: "/data"},
		{HostPath: rw, GuestPath: "/mnt/out", Writable: true},
	}})
	startVM(t, ctx, vm)
	if got := run(t, ctx, vm, "cat /data/input.txt").Stdout; got != "from host\n" {
		t.Fatalf("read-only mount: %q", got)
	}
	if res := run(t, ctx, vm, "echo x > /data/new.txt"); res.OK() || !strings.Contains(res.Stderr, "Read-only") {
		t.Fatalf("write to a read-only mount: %+v", res)
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a read-only mount let the guest write to the host")
	}
	run(t, ctx, vm, "mkdir -p /mnt/out/sub && echo result > /mnt/out/sub/r.txt")
	if b, err := os.ReadFile(filepath.Join(rw, "sub", "r.txt")); err != nil || string(b) != "result\n" {
		t.Fatalf("writable mount on the host: %q %v", b, err)
	}
}

func TestMountValidation(t *testing.T) {
	ctx := testContext(t, time.Minute)
	home := t.TempDir()
	for _, m := range []smolvm.Mount{
		{HostPath: "/no/such/dir", GuestPath: "/data"},
		{HostPath: home, GuestPath: "relative"},
		{HostPath: home, GuestPath: "/with space"},
		{HostPath: home, GuestPath: "/"},
	} {
		_, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{Mounts: []smolvm.Mount{m}}, smolvm.WithHome(home))
		if !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("mount %+v: %v, want ErrInvalid", m, err)
		}
	}
}
