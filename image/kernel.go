package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/smolvm/smolvm/internal/initramfs"
	"github.com/smolvm/smolvm/internal/kernel"
	"github.com/smolvm/smolvm/internal/statedir"
)

// Backends a kernel is prepared for.
const (
	BackendQEMU        = "qemu"
	BackendFirecracker = "firecracker"
)

// Kernel is a guest kernel ready for a backend.
type Kernel struct {
	Path    string `json:"path"`
	Release string `json:"release"`
	// Format is "bzImage" or "vmlinux" (uncompressed ELF).
	Format string `json:"format"`
	// Source is the kernel it was made from (a bzImage a vmlinux was
	// extracted from); equal to Path otherwise.
	Source string `json:"source"`
}

// PrepareKernel returns the kernel for backend ("" = QEMU): QEMU boots the
// bzImage FindKernel finds; Firecracker needs an uncompressed ELF vmlinux,
// which is extracted from the bzImage once and cached under kernels/.
func (b *Builder) PrepareKernel(ctx context.Context, backend string) (*Kernel, error) {
	src, err := b.FindKernel()
	if err != nil {
		return nil, err
	}
	format, err := kernel.Detect(src)
	if err != nil {
		return nil, err
	}
	release, err := initramfs.KernelRelease(src)
	if err != nil {
		return nil, err
	}
	k := &Kernel{Path: src, Release: release, Format: string(format), Source: src}
	switch backend {
	case "", BackendQEMU:
		return k, nil // QEMU boots either format
	case BackendFirecracker:
		if format == kernel.ELF {
			return k, nil
		}
	default:
		return nil, fmt.Errorf("%w: backend %q: want %s or %s", ErrInvalid, backend, BackendQEMU, BackendFirecracker)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	// Keyed by the source's identity, so a replaced kernel is extracted anew.
	id := sha256.Sum256([]byte(src + "\x00" + strconv.FormatInt(fi.Size(), 10) + "\x00" + fi.ModTime().String()))
	dir := filepath.Join(b.cacheDir(), "kernels")
	dst := filepath.Join(dir, release+"-"+hex.EncodeToString(id[:6])+".vmlinux")
	k.Path, k.Format = dst, string(kernel.ELF)
	if _, err := os.Stat(dst); err == nil {
		return k, nil
	}
	if err := b.mkdir(dir); err != nil {
		return nil, err
	}
	b.reporter().step("extracting vmlinux from %s", src)
	tmp, err := os.CreateTemp(dir, ".vmlinux-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	err = kernel.ExtractELF(src, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), statedir.FileMode)
	}
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return nil, err
	}
	return k, nil
}
