package image

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unpackTarGz extracts a root filesystem tarball into dir, keeping modes,
// owners (when running as root), symlinks and hard links. Entries that
// would land outside dir are rejected.
func unpackTarGz(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", path, err)
	}
	tr := tar.NewReader(gz)
	root := os.Geteuid() == 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack %s: %w", path, err)
		}
		name := filepath.Clean("/" + hdr.Name)
		target := filepath.Join(dir, name)
		if name == "/" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("unpack %s: %s: %w", path, hdr.Name, err)
			}
		case tar.TypeSymlink:
			os.Remove(target)
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.Clean("/"+hdr.Linkname))
			os.Remove(target)
			if err := os.Link(src, target); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if !root {
				continue
			}
			m := uint32(mode)
			switch hdr.Typeflag {
			case tar.TypeChar:
				m |= unix.S_IFCHR
			case tar.TypeBlock:
				m |= unix.S_IFBLK
			default:
				m |= unix.S_IFIFO
			}
			if err := unix.Mknod(target, m, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
				return err
			}
		default:
			continue
		}
		if root {
			if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// chown clears setuid bits; set the mode again afterwards.
			os.Chmod(target, os.FileMode(hdr.Mode).Perm()|modeBits(hdr.Mode))
		}
	}
}

func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&04000 != 0 {
		out |= os.ModeSetuid
	}
	if m&02000 != 0 {
		out |= os.ModeSetgid
	}
	if m&01000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// makeExt4 makes an ext4 image of dir, sizeMiB big, without mounting
// anything (mke2fs -d copies the tree in).
func makeExt4(ctx context.Context, dir, out string, sizeMiB int) error {
	cmd := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4",
		"-L", "smolvm-root", "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
		"-d", dir, out, strconv.Itoa(sizeMiB)+"M")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		msg := strings.TrimSpace(string(b))
		if strings.Contains(msg, "Could not allocate block") || strings.Contains(msg, "No space left") {
			return fmt.Errorf("mke2fs: %d MiB is too small for the root filesystem: %s", sizeMiB, msg)
		}
		return fmt.Errorf("mke2fs: %w: %s", err, msg)
	}
	return nil
}
