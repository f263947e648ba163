package smolvm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/shell"
)

// Upload copies a local file or directory tree into the guest at
// guestPath, over SFTP on the VM's pinned SSH connection, as `cp -r` does:
// if guestPath is an existing directory, local lands inside it under its
// own name; otherwise local becomes guestPath, and missing parent
// directories are made. Permission bits are kept and files are streamed.
// local itself is resolved as given; symlinks beneath it are copied as
// symlinks, never followed, and nothing outside local is read.
func (v *VM) Upload(ctx context.Context, local, guestPath string) error {
	return v.UploadWith(ctx, local, guestPath, CopyOptions{})
}

// CopyOptions adjusts UploadWith and DownloadWith.
type CopyOptions struct {
	// Archive is cp -a: modification times of files and directories are
	// kept (symlinks' are not), and a download keeps the permission bits
	// whole, group and other write included (setuid, setgid and sticky
	// are still dropped: the guest must not hand the host such files).
	// Without it, copies get the time of the copy, and a download drops
	// group and other write, as cp does under umask 022.
	Archive bool
}

// UploadWith is Upload with o.
func (v *VM) UploadWith(ctx context.Context, local, guestPath string, o CopyOptions) error {
	return opError("upload", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		return destinationError(guest.UploadWith(ctx, c, local, guestPath, v.log(), v.symlink, guest.CopyOptions{Archive: o.Archive}))
	}))
}

// Download copies a guest file or directory tree to local, as `cp -r`
// does: if local is an existing directory, the copy lands inside it under
// its own name; otherwise it becomes local. local itself is resolved as
// given; the guest is not trusted with anything beneath it: nothing it
// sends (names, symlinks, modes, sizes) makes Download write, chmod or
// follow anything outside the copy. Each file is written atomically
// (temporary file, then rename), and a new tree appears only once
// complete; a tree merged into an existing directory may be left
// partly copied by a failure. Symlinks are copied as symlinks and never
// followed; modes lose setuid, setgid, sticky and group/other write;
// devices, FIFOs and sockets are skipped with a warning; a file larger
// than the host's free space is refused.
func (v *VM) Download(ctx context.Context, guestPath, local string) error {
	return v.DownloadWith(ctx, guestPath, local, CopyOptions{})
}

// DownloadWith is Download with o.
func (v *VM) DownloadWith(ctx context.Context, guestPath, local string, o CopyOptions) error {
	lim := new(guest.RecvLimit)
	return opError("download", v.id, v.withSFTPLimited(ctx, lim, func(c *sftp.Client) error {
		return destinationError(guest.DownloadWith(ctx, c, lim, guestPath, local, v.log(), guest.CopyOptions{Archive: o.Archive}))
	}))
}

// WriteFile streams r into the guest file guestPath (an absolute path),
// replacing it atomically: the bytes go to a temporary file beside it,
// which is renamed over guestPath only once complete, so a failure or a
// cancelled ctx leaves the old file (or none) in place. Missing parent
// directories are made; perm 0 means 0644. It returns the bytes written.
// A directory at guestPath matches ErrInvalid and syscall.EISDIR.
func (v *VM) WriteFile(ctx context.Context, guestPath string, r io.Reader, perm fs.FileMode) (int64, error) {
	if err := checkGuestPath(guestPath); err != nil {
		return 0, opError("write file", v.id, err)
	}
	if strings.HasSuffix(guestPath, "/") {
		return 0, opError("write file", v.id, &ValidationError{Field: "guest path", Value: guestPath, Reason: "ends with '/': name the file to write, such as " + path.Join(guestPath, "file")})
	}
	if perm == 0 {
		perm = 0o644
	}
	var n int64
	err := v.withSFTP(ctx, func(c *sftp.Client) error {
		if fi, err := c.Lstat(guestPath); err == nil && fi.IsDir() {
			// Both: bad input (ErrInvalid), and what os would say.
			return fmt.Errorf("%w (%w)", &ValidationError{Field: "guest path", Value: guestPath, Reason: "is a directory: name the file to write inside it, such as " + path.Join(guestPath, "file")}, syscall.EISDIR)
		}
		dir := path.Dir(guestPath)
		if err := c.MkdirAll(dir); err != nil {
			return fmt.Errorf("create %s in the guest: %w", dir, err)
		}
		tmp := path.Join(dir, ".smolvm-"+rand.Text())
		f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return fmt.Errorf("%s: %w", guestPath, err)
		}
		n, err = f.ReadFrom(r)
		if err == nil {
			err = f.Chmod(perm.Perm())
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = c.PosixRename(tmp, guestPath)
		}
		if err != nil {
			c.Remove(tmp)
			return fmt.Errorf("%s: %w", guestPath, err)
		}
		return nil
	})
	return n, opError("write file", v.id, err)
}

// ReadFile streams the guest file guestPath (an absolute path) to w and
// returns the bytes copied. A missing file matches fs.ErrNotExist; a
// directory or special file is ErrInvalid.
func (v *VM) ReadFile(ctx context.Context, guestPath string, w io.Writer) (int64, error) {
	if err := checkGuestPath(guestPath); err != nil {
		return 0, opError("read file", v.id, err)
	}
	var n int64
	err := v.withSFTP(ctx, func(c *sftp.Client) error {
		// Stat first: opening a FIFO would block until the guest writes.
		if fi, err := c.Stat(guestPath); err != nil {
			return fmt.Errorf("%s: %w", guestPath, err)
		} else if !fi.Mode().IsRegular() {
			return &ValidationError{Field: "path", Value: guestPath, Reason: "is a " + guest.Kind(fi.Mode()) + ", not a file"}
		}
		f, err := c.Open(guestPath)
		if err != nil {
			return fmt.Errorf("%s: %w", guestPath, err)
		}
		defer f.Close()
		n, err = f.WriteTo(w)
		if err != nil {
			return fmt.Errorf("%s: %w", guestPath, err)
		}
		return nil
	})
	return n, opError("read file", v.id, err)
}

func checkGuestPath(p string) error {
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) || path.Clean(p) == "/" {
		return &ValidationError{Field: "guest path", Value: p, Reason: "must be an absolute path to a file, such as /tmp/data.txt"}
	}
	return nil
}

// destinationError turns a destination that cannot take the copy into a
// *ValidationError, so it matches ErrInvalid.
func destinationError(err error) error {
	var de *guest.DestinationError
	if errors.As(err, &de) {
		return &ValidationError{Field: "destination", Value: de.Path, Reason: de.Reason}
	}
	return err
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
	return v.withSFTPLimited(ctx, nil, fn)
}

// withSFTPLimited is withSFTP with a client that receives through lim
// (nil: no limit).
func (v *VM) withSFTPLimited(ctx context.Context, lim *guest.RecvLimit, fn func(*sftp.Client) error) error {
	conn, err := v.conn(ctx)
	if err != nil {
		return err
	}
	c, err := conn.SFTPLimited(lim)
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
