package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/disk"
)

// ext4 layout smolvm builds with: 4 KiB blocks, 256-byte inodes.
const (
	blockSize = 4096
	inodeSize = 256
)

// treeUsage is what a directory tree needs on ext4.
type treeUsage struct {
	blocks int64 // data, directory and long-symlink blocks
	inodes int64
}

// measureTree sums the blocks and inodes dir's tree needs on ext4, hard
// links counted once.
func measureTree(dir string) (treeUsage, error) {
	var u treeUsage
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		u.inodes++
		switch {
		case fi.Mode().IsRegular():
			b := (fi.Size() + blockSize - 1) / blockSize
			u.blocks += b + b/340 // extent tree blocks for big files
		case fi.IsDir():
			// Directories grow in blocks as entries are added; the size the
			// host filesystem reports is a fair estimate.
			u.blocks += max(1, (fi.Size()+blockSize-1)/blockSize)
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			u.blocks++ // longer targets do not fit in the inode
		}
		return nil
	})
	return u, err
}

// inodeCount is how many inodes to make: room for the tree and for the
// files a VM will add, at least mke2fs's own default for the size.
func inodeCount(u treeUsage, sizeMiB int) int64 {
	return max(u.inodes+u.inodes/4+1024, int64(sizeMiB)<<20/16384)
}

// journalMiB is the journal smolvm makes for a filesystem of sizeMiB:
// 1/32 of it, 4 to 64 MiB. (mke2fs's own default takes 16 MiB of a 128 MiB
// filesystem.)
func journalMiB(sizeMiB int) int {
	return min(max(sizeMiB/32, 4), 64)
}

// minSizeMiB is the smallest filesystem, in MiB, that holds the tree:
// data, inode tables, journal, group metadata, and a small margin so the
// guest can boot and write its few files.
func minSizeMiB(u treeUsage) int {
	for mib := 8; ; mib += max(1, mib/32) {
		n := int64(mib) << 20 / blockSize
		groups := (n + 32767) / 32768
		inodeBlocks := inodeCount(u, mib) * inodeSize / blockSize
		// Per group: two bitmaps, descriptors and the blocks reserved for
		// online growth (generous), plus superblock backups.
		meta := groups*(2+8) + 256
		need := u.blocks + inodeBlocks + int64(journalMiB(mib))<<20/blockSize + meta
		if need+need/50+256 <= n { // 2% and 1 MiB to spare
			return mib
		}
	}
}

// makeExt4 makes an ext4 image of dir, sizeMiB big, without mounting
// anything (mke2fs -d copies the tree in). A size too small for the tree
// is an error naming the minimum.
func makeExt4(ctx context.Context, dir, out string, sizeMiB int, u treeUsage) error {
	if min := minSizeMiB(u); sizeMiB < min {
		return &SizeError{SizeMiB: sizeMiB, MinMiB: min}
	}
	cmd := exec.CommandContext(ctx, disk.Tool("mke2fs"), "-q", "-F", "-t", "ext4",
		"-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize),
		"-N", strconv.FormatInt(inodeCount(u, sizeMiB), 10), "-m", "0",
		"-J", "size="+strconv.Itoa(journalMiB(sizeMiB)),
		"-L", "smolvm-root", "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
		"-d", dir, out, strconv.Itoa(sizeMiB)+"M")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		msg := strings.TrimSpace(string(b))
		if strings.Contains(msg, "Could not allocate block") || strings.Contains(msg, "No space left") {
			// The estimate was short: name a size that surely fits.
			return &SizeError{SizeMiB: sizeMiB, MinMiB: max(minSizeMiB(u), sizeMiB+sizeMiB/8+1), Detail: msg}
		}
		return fmt.Errorf("mke2fs: %w: %s", err, msg)
	}
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// SizeError says a root filesystem size is too small for the files.
// It matches ErrInvalid.
type SizeError struct {
	SizeMiB, MinMiB int
	Detail          string
}

func (e *SizeError) Error() string {
	s := fmt.Sprintf("root filesystem size %d MiB is too small: the files need at least %d MiB", e.SizeMiB, e.MinMiB)
	if e.Detail != "" {
		s += " (mke2fs: " + e.Detail + ")"
	}
	return s
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *SizeError) Is(target error) bool { return target == ErrInvalid }
