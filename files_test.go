package smolvm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestFileTransfer(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{DiskMiB: 1024})
	startVM(t, ctx, vm)
	dir := t.TempDir()

	t.Run("50MiB file", func(t *testing.T) {
		data := make([]byte, 50<<20)
		rand.Read(data)
		sum := sha256.Sum256(data)
		src := filepath.Join(dir, "big.bin")
		if err := os.WriteFile(src, data, 0o640); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := vm.Upload(ctx, src, "/root/deep/new/dir/big.bin"); err != nil {
			t.Fatal(err)
		}
		up := time.Since(start)
		res := run(t, ctx, vm, "sha256sum /root/deep/new/dir/big.bin; stat -c %a /root/deep/new/dir/big.bin")
		if want := hex.EncodeToString(sum[:]); !strings.HasPrefix(res.Stdout, want) || !strings.HasSuffix(res.Stdout, "\n640\n") {
			t.Fatalf("in guest: %q, want sum %s and mode 640", res.Stdout, want)
		}
		dst := filepath.Join(dir, "back.bin")
		start = time.Now()
		if err := vm.Download(ctx, "/root/deep/new/dir/big.bin", dst); err != nil {
			t.Fatal(err)
		}
		down := time.Since(start)
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("downloaded file differs (err %v)", err)
		}
		t.Logf("50 MiB upload %v (%.1f MiB/s), download %v (%.1f MiB/s)", up, 50/up.Seconds(), down, 50/down.Seconds())
	})

	t.Run("directory", func(t *testing.T) {
		tree := filepath.Join(dir, "tree")
		os.MkdirAll(filepath.Join(tree, "sub", "deeper"), 0o750)
		os.WriteFile(filepath.Join(tree, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
		os.WriteFile(filepath.Join(tree, "sub", "deeper", "secret"), []byte("s"), 0o600)
		os.Symlink("run.sh", filepath.Join(tree, "link"))
		if err := vm.Upload(ctx, tree, "/opt/tree"); err != nil {
			t.Fatal(err)
		}
		res := run(t, ctx, vm, "/opt/tree/run.sh && stat -c '%n %a' /opt/tree/sub /opt/tree/sub/deeper/secret && readlink /opt/tree/link")
		if want := "ran\n/opt/tree/sub 750\n/opt/tree/sub/deeper/secret 600\nrun.sh\n"; res.Stdout != want {
			t.Fatalf("guest tree: %q, want %q", res.Stdout, want)
		}
		back := filepath.Join(dir, "back")
		if err := vm.Download(ctx, "/opt/tree", back); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]os.FileMode{"run.sh": 0o755, "sub/deeper/secret": 0o600, "sub": 0o750 | os.ModeDir} {
			fi, err := os.Stat(filepath.Join(back, name))
			if err != nil || fi.Mode() != want {
				t.Errorf("%s: %v %v, want %v", name, fi.Mode(), err, want)
			}
		}
		if target, err := os.Readlink(filepath.Join(back, "link")); err != nil || target != "run.sh" {
			t.Errorf("symlink: %q %v", target, err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		if err := vm.Download(ctx, "/no/such/file", filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "/no/such/file") {
			t.Fatalf("got %v", err)
		}
		if err := vm.Upload(ctx, filepath.Join(dir, "nope"), "/root/x"); err == nil {
			t.Fatal("upload of a missing file succeeded")
		}
	})
}
