// Package disk prepares a VM's own root disk from an image: a cheap copy
// (reflink where the filesystem can, sparse otherwise), grown to size.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Clone copies src to dst, sharing blocks (FICLONE) where the filesystem
// supports it and skipping holes otherwise, so a mostly empty image costs
// only its data. dst must not exist.
func Clone(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("clone disk: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	if err := sparseCopy(out, in, fi.Size()); err != nil {
		return fmt.Errorf("clone disk %s: %w", src, err)
	}
	return nil
}

// sparseCopy copies only the data extents of in, found with SEEK_DATA and
// SEEK_HOLE, leaving holes in out.
func sparseCopy(out, in *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// Resize makes the ext4 image at path sizeMiB big, file and filesystem.
// Shrinking works down to the space the files need; resize2fs says so
// when the size is too small.
func Resize(ctx context.Context, path string, sizeMiB int) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("resize disk: %w", err)
	}
	want := int64(sizeMiB) << 20
	switch {
	case want == fi.Size():
		return nil
	case want > fi.Size():
		if err := os.Truncate(path, want); err != nil {
			return fmt.Errorf("resize disk: %w", err)
		}
		return resize2fs(ctx, path, sizeMiB)
	default:
		if err := resize2fs(ctx, path, sizeMiB); err != nil {
			return err
		}
		if err := os.Truncate(path, want); err != nil {
			return fmt.Errorf("resize disk: %w", err)
		}
		return nil
	}
}

func resize2fs(ctx context.Context, path string, sizeMiB int) error {
	out, err := exec.CommandContext(ctx, Tool("resize2fs"), "-f", path, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("resize disk to %d MiB: resize2fs: %w: %s", sizeMiB, err, strings.TrimSpace(string(out)))
	}
	return nil
}
