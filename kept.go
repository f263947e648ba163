package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/statedir"
	"github.com/smolvm/smolvm/internal/store"
)

// A disk kept by RetainDiskOnDelete stays at vms/<id>/disk.ext4, alone in
// its directory, until a create with ReuseDisk boots it again or
// RemoveKeptDisk removes it. Nothing else ever removes it: a create with
// its id fails until the user picks one.

// keptDisk reports whether dir holds a disk kept on purpose: the disk and
// nothing else (a crashed create leaves keys or an initramfs beside it)
// but maybe the VM lock file a stale handle made.
func keptDisk(dir string) bool {
	files, _ := os.ReadDir(dir)
	disk := false
	for _, f := range files {
		switch {
		case f.Name() == "disk.ext4" && f.Type().IsRegular():
			disk = true
		case f.Name() != ".lock":
			return false
		}
	}
	return disk
}

// removeAllButDisk empties dir except for its disk.
func removeAllButDisk(p paths) error {
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if path := filepath.Join(p.dir, e.Name()); path != p.disk() {
			errs = append(errs, os.RemoveAll(path))
		}
	}
	return errors.Join(errs...)
}

// lockKept serializes deciding about kept disks: a create reusing one
// and a RemoveKeptDisk of the same id must not both go ahead.
func lockKept(ctx context.Context, home string) (func(), error) {
	dir := filepath.Join(home, "vms")
	if err := statedir.MkdirAll(home, dir); err != nil {
		return nil, err
	}
	return flock.Lock(ctx, filepath.Join(dir, ".kept.lock"), statedir.FileMode)
}

// errKeptDisk is the error of a create whose id has a kept disk.
func errKeptDisk(id string, p paths) error {
	return fmt.Errorf("%w: a disk kept from a deleted VM %q is at %s: reuse it with `smolvm create --name %s --reuse-disk` (SDK: VMConfig.ReuseDisk) or remove it with `smolvm delete --disk %s` (SDK: smolvm.RemoveKeptDisk)",
		ErrAlreadyExists, id, p.disk(), id, id)
}

// RemoveKeptDisk removes the disk a VM deleted with RetainDiskOnDelete
// left behind, so its id can be used afresh. It fails with ErrNotFound
// when there is no such disk, and with ErrAlreadyExists while a VM with
// that id exists (delete that VM instead).
func RemoveKeptDisk(ctx context.Context, id string, opts ...Option) (err error) {
	defer func() { err = opError("remove kept disk", id, err) }()
	if !idPattern.MatchString(id) {
		return &ValidationError{Field: "id", Value: fmt.Sprintf("%q", id), Reason: "not a VM id"}
	}
	s := newSettings(opts)
	st, err := openStore(ctx, s)
	if err != nil {
		return err
	}
	defer st.Close()
	unlock, err := lockKept(ctx, s.home)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := st.GetVM(ctx, id); err == nil {
		return fmt.Errorf("%w: VM %q exists; its disk is not a kept one (delete the VM)", ErrAlreadyExists, id)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	p := newPaths(s.home, id)
	if !keptDisk(p.dir) {
		return fmt.Errorf("%w: no kept disk at %s", ErrNotFound, p.disk())
	}
	return os.RemoveAll(p.dir)
}
