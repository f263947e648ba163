package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/smolvm/smolvm/internal/untar"
)

// dirSource builds from a directory tree the user prepared. The tree is
// copied, never changed.
type dirSource struct {
	path string
	rep  *reporter
}

func (s *dirSource) resolve(ctx context.Context) (string, map[string]string, error) {
	abs, err := filepath.Abs(s.path)
	if err != nil {
		return "", nil, err
	}
	s.path = abs
	fi, err := os.Stat(abs)
	if err != nil {
		return "", nil, fmt.Errorf("%w: dir source: %w", ErrInvalid, err)
	}
	if !fi.IsDir() {
		return "", nil, fmt.Errorf("%w: dir source %s is not a directory (use tar:PATH for a tarball)", ErrInvalid, abs)
	}
	// Metadata, not contents: a changed file changes its size or mtime.
	h := sha256.New()
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o %d %d", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(h, " %d:%d %d", st.Uid, st.Gid, st.Ino)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			t, _ := os.Readlink(p)
			fmt.Fprintf(h, " -> %s", t)
		}
		h.Write([]byte{'\n'})
		return ctx.Err()
	})
	if err != nil {
		return "", nil, fmt.Errorf("dir source %s: %w", abs, err)
	}
	return "dir:" + abs, map[string]string{"source": "dir", "path": abs, "tree": hex.EncodeToString(h.Sum(nil))}, nil
}

func (s *dirSource) fill(ctx context.Context, dir string, img *Image) error {
	s.rep.step("copying %s", s.path)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarTree(ctx, s.path, pw)) }()
	_, err := untar.Apply(dir, pr, unpackOptions(false))
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("dir source %s: %w", s.path, err)
	}
	return nil
}

// tarTree writes the tree at root as a tar stream, keeping owners, modes,
// symlinks, hard links and device nodes.
func tarTree(ctx context.Context, root string, w io.Writer) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname = "", ""
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			k := inode{uint64(st.Dev), st.Ino}
			if first, ok := links[k]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[k] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// tarSource builds from a root filesystem tarball (plain, gzip, zstd, xz
// or bzip2), such as `docker export` or a distribution's rootfs release.
type tarSource struct {
	path string
	rep  *reporter
}

func (s *tarSource) resolve(ctx context.Context) (string, map[string]string, error) {
	abs, err := filepath.Abs(s.path)
	if err != nil {
		return "", nil, err
	}
	s.path = abs
	fi, err := os.Stat(abs)
	if err != nil {
		return "", nil, fmt.Errorf("%w: tar source: %w", ErrInvalid, err)
	}
	if !fi.Mode().IsRegular() {
		return "", nil, fmt.Errorf("%w: tar source %s is not a file (use dir:PATH for a directory)", ErrInvalid, abs)
	}
	sum, err := sha256File(abs)
	if err != nil {
		return "", nil, err
	}
	return "tar:" + abs, map[string]string{"source": "tar", "sha256": sum}, nil
}

func (s *tarSource) fill(ctx context.Context, dir string, img *Image) error {
	return unpackFile(s.path, dir, s.rep)
}

// unpackOptions: owners and device nodes only as root; whiteouts for OCI
// layers only.
func unpackOptions(whiteouts bool) untar.Options {
	root := os.Geteuid() == 0
	return untar.Options{Whiteouts: whiteouts, Owners: root, Devices: root}
}

// unpackFile extracts a (compressed) root filesystem tarball into dir.
func unpackFile(path, dir string, rep *reporter) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	bar := rep.bar("unpacking "+filepath.Base(path), fi.Size())
	r, err := untar.Decompress(io.TeeReader(f, bar))
	if err != nil {
		return fmt.Errorf("unpack %s: %w", path, err)
	}
	defer r.Close()
	st, err := untar.Apply(dir, r, unpackOptions(false))
	if err != nil {
		return fmt.Errorf("unpack %s: %w", path, err)
	}
	if st.Entries == 0 {
		return fmt.Errorf("unpack %s: %w: no entries", path, untar.ErrCorrupt)
	}
	// Read to the end so a truncated compressed stream is caught.
	if _, err := io.Copy(io.Discard, r); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("unpack %s: %w: %w", path, untar.ErrCorrupt, err)
	}
	bar.done()
	if st.SkippedDevices > 0 {
		rep.step("  skipped %d device nodes (not root; the guest's /dev is devtmpfs)", st.SkippedDevices)
	}
	return nil
}
