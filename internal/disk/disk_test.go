package disk

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

func TestCloneAndResize(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed (apt-get install e2fsprogs)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src.ext4")
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", src, "128M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	dst := filepath.Join(dir, "dst.ext4")
	if err := Clone(src, dst); err != nil {
		t.Fatal(err)
	}
	if err := Clone(src, dst); err == nil {
		t.Fatal("clone onto an existing file must fail")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 64<<20 {
		t.Errorf("clone is not sparse: %d MiB allocated of 128", used>>20)
	}
	ctx := context.Background()
	for _, size := range []int{300, 100, 100} {
		if err := Resize(ctx, dst, size); err != nil {
			t.Fatalf("resize to %d: %v", size, err)
		}
		fi, _ := os.Stat(dst)
		if fi.Size() != int64(size)<<20 {
			t.Fatalf("size %d, want %d MiB", fi.Size(), size)
		}
		if out, err := exec.Command("e2fsck", "-fn", dst).CombinedOutput(); err != nil {
			t.Fatalf("fsck after resize to %d: %v\n%s", size, err, out)
		}
	}
	if err := Resize(ctx, dst, 1); err == nil {
		t.Fatal("shrinking below the data must fail")
	}
}
