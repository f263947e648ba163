package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/shell"
)

// Upload copies a local file or directory tree into the guest at
// guestPath, over SFTP on the VM's pinned SSH connection. Modes are kept,
// files are streamed, and missing parent directories are created. A
// directory lands at guestPath itself (like `cp -r src dst` to a new dst).
func (v *VM) Upload(ctx context.Context, local, guestPath string) error {
	return opError("upload", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		fi, err := os.Stat(local)
		if err != nil {
			return err
		}
		if err := c.MkdirAll(path.Dir(guestPath)); err != nil {
			return fmt.Errorf("create %s: %w", path.Dir(guestPath), err)
		}
		if !fi.IsDir() {
			return uploadFile(ctx, c, local, guestPath, fi.Mode())
		}
		return filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			rel, err := filepath.Rel(local, p)
			if err != nil {
				return err
			}
			dst := path.Join(guestPath, filepath.ToSlash(rel))
			info, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case d.IsDir():
				if err := c.MkdirAll(dst); err != nil {
					return fmt.Errorf("create %s: %w", dst, err)
				}
				return c.Chmod(dst, info.Mode().Perm())
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				// Not c.Symlink: pkg/sftp's server makes relative targets
				// absolute against its working directory.
				return v.symlink(ctx, target, dst)
			case info.Mode().IsRegular():
				return uploadFile(ctx, c, p, dst, info.Mode())
			}
			return nil // sockets, devices: not copied
		})
	}))
}

func uploadFile(ctx context.Context, c *sftp.Client, src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
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
	return c.Chmod(dst, mode.Perm())
}

// Download copies a guest file or directory tree to local, keeping modes.
func (v *VM) Download(ctx context.Context, guestPath, local string) error {
	return opError("download", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		fi, err := c.Stat(guestPath)
		if err != nil {
			return fmt.Errorf("%s in the guest: %w", guestPath, err)
		}
		if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
			return err
		}
		if !fi.IsDir() {
			return downloadFile(ctx, c, guestPath, local, fi.Mode())
		}
		w := c.Walk(guestPath)
		for w.Step() {
			if err := w.Err(); err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			rel, err := filepath.Rel(guestPath, w.Path())
			if err != nil {
				return err
			}
			dst := filepath.Join(local, rel)
			info := w.Stat()
			switch {
			case info.IsDir():
				if err := os.MkdirAll(dst, 0o755); err != nil {
					return err
				}
				if err := os.Chmod(dst, info.Mode().Perm()); err != nil {
					return err
				}
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := c.ReadLink(w.Path())
				if err != nil {
					return err
				}
				os.Remove(dst)
				if err := os.Symlink(target, dst); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				if err := downloadFile(ctx, c, w.Path(), dst, info.Mode()); err != nil {
					return err
				}
			}
		}
		return nil
	}))
}

func downloadFile(ctx context.Context, c *sftp.Client, src, dst string, mode fs.FileMode) error {
	in, err := c.Open(src)
	if err != nil {
		return fmt.Errorf("open %s in the guest: %w", src, err)
	}
	defer in.Close()
	// Write to a temporary name first: a failed download must not leave a
	// truncated file where a good one was.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".part-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = in.WriteTo(ctxWriter{ctx, tmp})
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download %s: %w", src, err)
	}
	if err := os.Chmod(tmp.Name(), mode.Perm()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// symlink makes a symbolic link in the guest, target kept verbatim.
func (v *VM) symlink(ctx context.Context, target, link string) error {
	res, err := v.Run(ctx, "ln -sfn -- "+shell.Quote(target)+" "+shell.Quote(link))
	if err != nil {
		return err
	}
	if !res.OK() {
		return fmt.Errorf("symlink %s: %s", link, strings.TrimSpace(res.Stderr))
	}
	return nil
}

// withSFTP runs fn with an SFTP client on the VM's SSH connection.
func (v *VM) withSFTP(ctx context.Context, fn func(*sftp.Client) error) error {
	conn, err := v.conn(ctx)
	if err != nil {
		return err
	}
	c, err := conn.SFTP()
	if err != nil {
		v.dropClientOnError(conn)
		return err
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- fn(c) }()
	select {
	case err := <-done:
		if cerr := conn.Err(); err != nil && cerr != nil {
			// SFTP only says "connection lost"; say why.
			return fmt.Errorf("%w: %w", cerr, err)
		}
		return err
	case <-ctx.Done():
		c.Close() // unblocks fn
		<-done
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return &TimeoutError{Op: "transfer", VM: v.id}
		}
		return ctx.Err()
	}
}

// ctxReader and ctxWriter stop a copy once ctx is done.
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

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (w ctxWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	return w.w.Write(p)
}
