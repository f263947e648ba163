package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pkg/sftp"
)

// SymlinkFunc makes the guest symlink link pointing at target, verbatim.
type SymlinkFunc func(ctx context.Context, target, link string) error

// Upload copies the host file or directory src into the guest at dst over
// c, as `cp -r` does: if dst is an existing guest directory, src lands
// inside it under its own name ("." lands in dst itself); otherwise src
// becomes dst, and missing parent directories are made. Modes (permission
// bits) are kept.
//
// src itself is the host user's path and is resolved as given (a symlink
// to a directory uploads the directory). Beneath it nothing is followed:
// the tree is read through an os.Root, so no entry, however it changes
// meanwhile, reads a file outside src; symlinks are recreated in the guest
// with their targets verbatim by symlink; devices, FIFOs and sockets are
// skipped with a warning on log.
func Upload(ctx context.Context, c *sftp.Client, src, dst string, log *slog.Logger, symlink SymlinkFunc) error {
	return UploadWith(ctx, c, src, dst, log, symlink, CopyOptions{})
}

// CopyOptions adjusts Upload and Download.
type CopyOptions struct {
	// Archive (cp -a) keeps modification times of files and
	// directories, and a download keeps the permission bits whole
	// (group and other write too; setuid, setgid and sticky never).
	Archive bool
}

// UploadWith is Upload with o.
func UploadWith(ctx context.Context, c *sftp.Client, src, dst string, log *slog.Logger, symlink SymlinkFunc, o CopyOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	target, merge, err := guestLanding(c, dst, filepath.Base(src), fi.IsDir())
	if err != nil {
		return err
	}
	if err := c.MkdirAll(path.Dir(target)); err != nil {
		return fmt.Errorf("create %s in the guest: %w", path.Dir(target), err)
	}
	if !fi.IsDir() {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is a %s, not a file or directory", src, Kind(fi.Mode()))
		}
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := uploadFile(ctx, c, f, src, target, fi); err != nil {
			return err
		}
		return keepTime(c, o, target, fi)
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		return err
	}
	defer root.Close()
	// A directory's time is set once its entries are in: they change it.
	type dirTime struct {
		gp string
		fi fs.FileInfo
	}
	var dirs []dirTime
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		hp, gp := filepath.Join(src, p), path.Join(target, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch m := info.Mode(); {
		case m.IsDir():
			if err := c.MkdirAll(gp); err != nil {
				return fmt.Errorf("create %s in the guest: %w", gp, err)
			}
			if p == "." && merge {
				return nil // an existing guest directory keeps its mode
			}
			if o.Archive {
				dirs = append(dirs, dirTime{gp, info})
			}
			return c.Chmod(gp, m.Perm())
		case m&fs.ModeSymlink != 0:
			link, err := root.Readlink(p)
			if err != nil {
				return err
			}
			// Not c.Symlink: pkg/sftp's server makes relative targets
			// absolute against its working directory.
			return symlink(ctx, link, gp)
		case m.IsRegular():
			f, err := root.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			// Open follows a symlink swapped in since the walk (within src
			// only): still send only the file the walk saw.
			if got, err := f.Stat(); err != nil || !os.SameFile(info, got) {
				return fmt.Errorf("%s changed while it was being copied", hp)
			}
			if err := uploadFile(ctx, c, f, hp, gp, info); err != nil {
				return err
			}
			return keepTime(c, o, gp, info)
		default:
			log.Warn("upload: skipped, not a file, directory or symlink", "path", hp, "type", Kind(m))
			return nil
		}
	})
	for i := len(dirs) - 1; i >= 0 && err == nil; i-- {
		err = keepTime(c, o, dirs[i].gp, dirs[i].fi)
	}
	return err
}

// keepTime gives the guest path gp fi's modification time, with Archive.
func keepTime(c *sftp.Client, o CopyOptions, gp string, fi fs.FileInfo) error {
	if !o.Archive {
		return nil
	}
	if err := c.Chtimes(gp, fi.ModTime(), fi.ModTime()); err != nil {
		return fmt.Errorf("set the time of %s in the guest: %w", gp, err)
	}
	return nil
}

// guestLanding says where in the guest the copy of a host entry named
// base lands, and whether that is an existing directory the copy merges
// into.
func guestLanding(c *sftp.Client, dst, base string, isDir bool) (target string, merge bool, err error) {
	gi, err := c.Stat(dst)
	switch {
	case err == nil && gi.IsDir():
		if !ValidName(base) {
			if !isDir {
				return "", false, &DestinationError{dst, "is a directory in the guest; name the file to copy to"}
			}
			return dst, true, nil
		}
		if isDir {
			// Merge if the directory is there already, as cp -r does.
			t := path.Join(dst, base)
			si, err := c.Stat(t)
			return t, err == nil && si.IsDir(), nil
		}
		return path.Join(dst, base), false, nil
	case err == nil && isDir:
		return "", false, &DestinationError{dst, "exists in the guest and is not a directory; a directory cannot be copied onto it"}
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if strings.HasSuffix(dst, "/") && !isDir {
			return "", false, &DestinationError{dst, "no such directory in the guest; create it first or drop the trailing slash"}
		}
	default:
		return "", false, fmt.Errorf("%s in the guest: %w", dst, err)
	}
	return path.Clean(dst), false, nil
}

func uploadFile(ctx context.Context, c *sftp.Client, in *os.File, src, dst string, fi fs.FileInfo) error {
	out, err := c.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("open %s in the guest: %w", dst, err)
	}
	_, err = out.ReadFromWithConcurrency(ctxReader{ctx, in}, 0)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("upload %s: %w", src, err)
	}
	return c.Chmod(dst, fi.Mode().Perm())
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
