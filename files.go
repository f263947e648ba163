package smolvm

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
	return opError("upload", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		return destinationError(guest.Upload(ctx, c, local, guestPath, v.log(), v.symlink))
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
	return opError("download", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		return destinationError(guest.Download(ctx, c, guestPath, local, v.log()))
	}))
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
