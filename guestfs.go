package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/guest"
)

// ErrTooLarge: a guest file or listing is bigger than the caller's limit
// (FS.ReadFile's cap, FS.ReadDir's entry count).
var ErrTooLarge = errors.New("too large")

// DefaultMaxReadFile caps FS.ReadFile: a guest file can be huge, or grow
// while it is read, and the bytes are held in the host's memory. Stream
// larger files with VM.ReadFile or VM.Download.
const DefaultMaxReadFile = 64 << 20

// MaxDirEntries is the most entries FS.ReadDir returns.
const MaxDirEntries = guest.MaxListEntries

// FS is a running VM's file system as the host sees it: small files as
// bytes, metadata, directory changes. Failures are *fs.PathError values
// (inside the usual *Error) whose Err is the guest's errno, so they match
// fs.ErrNotExist, fs.ErrExist, fs.ErrPermission, syscall.EISDIR,
// syscall.ENOTDIR and syscall.ENOTEMPTY with errors.Is, as the os
// package's own do. Paths are absolute guest paths. The guest is not
// trusted: what it says about its files is bounded and checked, and
// whatever it says is its word, not the host's.
type FS struct{ vm *VM }

// FS returns the VM's file system. It is cheap; every call goes over
// the VM's SSH connection.
func (v *VM) FS() *FS { return &FS{vm: v} }

// FileInfo describes one guest file as lstat(2) sees it: a symlink is
// itself, with its Target.
type FileInfo struct {
	Name string `json:"name"`
	// Type is "file", "dir", "symlink", "fifo", "socket", "device" or
	// "chardev".
	Type    string      `json:"type"`
	Size    int64       `json:"size"`
	Perm    fs.FileMode `json:"perm"` // permission bits only (0o755 is 493)
	ModTime time.Time   `json:"mtime"`
	Target  string      `json:"target,omitempty"` // a symlink's target, verbatim
}

// Mode is the file's type and permission bits.
func (fi FileInfo) Mode() fs.FileMode {
	return guest.FSEntry{Type: fi.Type, Perm: uint32(fi.Perm.Perm())}.Mode()
}

// IsDir says whether the file is a directory.
func (fi FileInfo) IsDir() bool { return fi.Type == "dir" }

func fileInfo(e guest.FSEntry) FileInfo {
	return FileInfo{Name: e.Name, Type: e.Type, Size: e.Size, Perm: fs.FileMode(e.Perm).Perm(), ModTime: e.Time().UTC(), Target: e.Target}
}

// fsPath checks an absolute guest path; root says whether "/" itself
// will do.
func fsPath(p string, root bool) error {
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) || len(p) >= 4096 || (!root && path.Clean(p) == "/") {
		what := "an absolute path, such as /tmp/data"
		if !root {
			what += " (not / itself)"
		}
		return &ValidationError{Field: "guest path", Value: fmt.Sprintf("%q", p), Reason: "must be " + what}
	}
	return nil
}

func (f *FS) client(ctx context.Context, op string) (*guest.Client, error) {
	c, err := f.vm.conn(ctx)
	if err != nil {
		return nil, opError(op, f.vm.id, err)
	}
	return c, nil
}

// ReadFile returns the guest file name's bytes, at most
// DefaultMaxReadFile of them; see ReadFileLimit.
func (f *FS) ReadFile(ctx context.Context, name string) ([]byte, error) {
	return f.ReadFileLimit(ctx, name, DefaultMaxReadFile)
}

// ReadFileLimit returns the guest file name's bytes. A file with more
// than limit bytes (also one that grows past limit while it is read) fails
// with an error matching ErrTooLarge, having held no more than limit.
// A directory matches syscall.EISDIR, another non-file ErrInvalid.
func (f *FS) ReadFileLimit(ctx context.Context, name string, limit int64) ([]byte, error) {
	if err := fsPath(name, false); err != nil {
		return nil, opError("read file", f.vm.id, err)
	}
	if limit <= 0 {
		return nil, opError("read file", f.vm.id, &ValidationError{Field: "limit", Value: limit, Reason: "must be positive"})
	}
	w := &capBuffer{max: limit}
	err := f.vm.withSFTP(ctx, func(c *sftp.Client) error {
		// Stat first: a FIFO would block the open, and a file already
		// over the limit need not be sent at all.
		fi, err := c.Stat(name)
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", name, err)
		case fi.IsDir():
			return &fs.PathError{Op: "read", Path: name, Err: syscall.EISDIR}
		case !fi.Mode().IsRegular():
			return &ValidationError{Field: "path", Value: name, Reason: "is a " + guest.Kind(fi.Mode()) + ", not a file"}
		case fi.Size() > limit:
			return fmt.Errorf("%s: %w: %d bytes, over the limit of %d (stream it with VM.ReadFile)", name, ErrTooLarge, fi.Size(), limit)
		}
		// The size is the guest's word; the cap holds whatever it sends.
		w.buf.Grow(int(min(fi.Size(), limit, 1<<20)))
		in, err := c.Open(name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer in.Close()
		if _, err := in.WriteTo(w); err != nil {
			if w.over {
				return fmt.Errorf("%s: %w: grew over the limit of %d bytes while it was read", name, ErrTooLarge, limit)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, opError("read file", f.vm.id, err)
	}
	return w.buf.Bytes(), nil
}

// capBuffer holds at most max bytes and fails the write that would pass
// them.
type capBuffer struct {
	buf  bytes.Buffer
	max  int64
	over bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if int64(b.buf.Len())+int64(len(p)) > b.max {
		b.over = true
		return 0, ErrTooLarge
	}
	return b.buf.Write(p)
}

// WriteFile writes data to the guest file name with permission bits perm
// (0: 0644), atomically: a temporary file beside it, renamed over it once
// complete, so readers see the old bytes or the new, never part. Missing
// parent directories are made (0755). A directory at name matches
// syscall.EISDIR.
func (f *FS) WriteFile(ctx context.Context, name string, data []byte, perm fs.FileMode) error {
	if err := fsPath(name, false); err != nil {
		return opError("write file", f.vm.id, err)
	}
	_, err := f.vm.WriteFile(ctx, name, bytes.NewReader(data), perm)
	return err
}

// Stat describes the guest path name without following a final symlink.
func (f *FS) Stat(ctx context.Context, name string) (FileInfo, error) {
	if err := fsPath(name, true); err != nil {
		return FileInfo{}, opError("stat", f.vm.id, err)
	}
	c, err := f.client(ctx, "stat")
	if err != nil {
		return FileInfo{}, err
	}
	e, err := c.FSStat(ctx, name)
	if err != nil {
		return FileInfo{}, opError("stat", f.vm.id, err)
	}
	return fileInfo(e), nil
}

// ReadDir lists the guest directory name, sorted by name, symlinks with
// their targets. A directory with more than MaxDirEntries entries fails
// with ErrTooLarge (list it with a command instead); a listing no
// directory could hold (names with "/" or NUL, "." or "..", one name
// twice, impossible sizes or link targets) fails with an error saying
// so.
func (f *FS) ReadDir(ctx context.Context, name string) ([]FileInfo, error) {
	if err := fsPath(name, true); err != nil {
		return nil, opError("read dir", f.vm.id, err)
	}
	c, err := f.client(ctx, "read dir")
	if err != nil {
		return nil, err
	}
	ents, err := c.FSList(ctx, name, MaxDirEntries)
	if errors.Is(err, guest.ErrTooMany) {
		err = fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	if err != nil {
		return nil, opError("read dir", f.vm.id, err)
	}
	out := make([]FileInfo, len(ents))
	for i, e := range ents {
		out[i] = fileInfo(e)
	}
	slices.SortFunc(out, func(a, b FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Mkdir makes the guest directory name (perm 0: 0755); it must not
// exist (fs.ErrExist) and its parent must (fs.ErrNotExist).
func (f *FS) Mkdir(ctx context.Context, name string, perm fs.FileMode) error {
	return f.mkdir(ctx, name, perm, false)
}

// MkdirAll makes the guest directory name and any missing parents (perm
// 0: 0755); an existing directory is fine, an existing file is
// syscall.ENOTDIR or fs.ErrExist.
func (f *FS) MkdirAll(ctx context.Context, name string, perm fs.FileMode) error {
	return f.mkdir(ctx, name, perm, true)
}

func (f *FS) mkdir(ctx context.Context, name string, perm fs.FileMode, parents bool) error {
	if err := fsPath(name, false); err != nil {
		return opError("mkdir", f.vm.id, err)
	}
	c, err := f.client(ctx, "mkdir")
	if err != nil {
		return err
	}
	return opError("mkdir", f.vm.id, c.FSMkdir(ctx, name, perm, parents))
}

// Remove removes the guest file, symlink or empty directory name; a
// directory with entries is syscall.ENOTEMPTY (use RemoveAll).
func (f *FS) Remove(ctx context.Context, name string) error {
	return f.remove(ctx, name, false)
}

// RemoveAll removes the guest path name and everything beneath it,
// without following symlinks. Like os.RemoveAll, a missing name is no
// error.
func (f *FS) RemoveAll(ctx context.Context, name string) error {
	err := f.remove(ctx, name, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (f *FS) remove(ctx context.Context, name string, recursive bool) error {
	if err := fsPath(name, false); err != nil {
		return opError("remove", f.vm.id, err)
	}
	c, err := f.client(ctx, "remove")
	if err != nil {
		return err
	}
	return opError("remove", f.vm.id, c.FSRemove(ctx, name, recursive))
}

// Rename renames the guest path oldName to newName, as rename(2) does: a
// file replaces a file, a directory an empty directory.
func (f *FS) Rename(ctx context.Context, oldName, newName string) error {
	for _, p := range []string{oldName, newName} {
		if err := fsPath(p, false); err != nil {
			return opError("rename", f.vm.id, err)
		}
	}
	c, err := f.client(ctx, "rename")
	if err != nil {
		return err
	}
	return opError("rename", f.vm.id, c.FSRename(ctx, oldName, newName))
}
