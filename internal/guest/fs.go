package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FSRequest is one request to the agent's smolvm-fs subsystem (see
// internal/agent/fsops.go).
type FSRequest struct {
	Op        string `json:"op"` // stat, list, mkdir, remove, rename
	Path      string `json:"path"`
	To        string `json:"to,omitempty"`
	Parents   bool   `json:"parents,omitempty"`
	Recursive bool   `json:"recursive,omitempty"`
	Perm      uint32 `json:"perm,omitempty"`
	Max       int    `json:"max,omitempty"`
}

// FSEntry is what the guest says about one file (lstat: a symlink is
// itself, with its Target).
type FSEntry struct {
	Name    string `json:"name"`
	Type    string `json:"type"` // file, dir, symlink, fifo, socket, device, chardev
	Size    int64  `json:"size"`
	Perm    uint32 `json:"perm"`
	ModTime int64  `json:"mtime_ns"`
	Target  string `json:"target,omitempty"`
}

// Bounds on what the host takes from the guest for the file API.
const (
	// MaxListEntries is the most entries a listing returns by default.
	MaxListEntries = 100_000
	// maxFSReply bounds one smolvm-fs answer: a full listing of
	// MaxListEntries entries with the longest names and link targets
	// would not fit, ordinary ones do (about 100 bytes each).
	maxFSReply = 32 << 20
	// maxLinkTarget is Linux's PATH_MAX, the longest target a symlink
	// can have.
	maxLinkTarget = unix.PathMax
)

// ErrTooMany means a directory holds more entries than the listing may
// return.
var ErrTooMany = errors.New("guest: too many directory entries")

// FSStat lstat's the guest path p.
func (c *Client) FSStat(ctx context.Context, p string) (FSEntry, error) {
	r, err := c.fsOp(ctx, FSRequest{Op: "stat", Path: p})
	if err != nil {
		return FSEntry{}, err
	}
	if r.Entry == nil {
		return FSEntry{}, fmt.Errorf("%w: stat %s: the guest answered without an entry", ErrUnsafe, p)
	}
	if err := checkEntry(*r.Entry, false); err != nil {
		return FSEntry{}, fmt.Errorf("stat %s: %w", p, err)
	}
	return *r.Entry, nil
}

// FSList lists the guest directory dir, at most max entries (0:
// MaxListEntries); more fail with ErrTooMany. Every entry is checked: a
// name no directory can hold ("", ".", "..", one with "/" or NUL), a
// name listed twice, an impossible size or link target fails the whole
// listing with ErrUnsafe.
func (c *Client) FSList(ctx context.Context, dir string, max int) ([]FSEntry, error) {
	if max <= 0 {
		max = MaxListEntries
	}
	r, err := c.fsOp(ctx, FSRequest{Op: "list", Path: dir, Max: max})
	if err != nil {
		if errors.Is(err, syscall.E2BIG) {
			return nil, fmt.Errorf("list %s: %w: more than %d", dir, ErrTooMany, max)
		}
		return nil, err
	}
	if len(r.Entries) > max {
		return nil, fmt.Errorf("%w: list %s: %d entries, more than the %d asked for", ErrUnsafe, dir, len(r.Entries), max)
	}
	seen := make(map[string]bool, len(r.Entries))
	for _, e := range r.Entries {
		if err := checkEntry(e, true); err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("%w: list %s: %q listed twice", ErrUnsafe, dir, e.Name)
		}
		seen[e.Name] = true
	}
	return r.Entries, nil
}

// FSMkdir makes the guest directory p (with parents: and any missing
// parents, and no error if it exists).
func (c *Client) FSMkdir(ctx context.Context, p string, perm fs.FileMode, parents bool) error {
	_, err := c.fsOp(ctx, FSRequest{Op: "mkdir", Path: p, Perm: uint32(perm.Perm()), Parents: parents})
	return err
}

// FSRemove removes the guest file or empty directory p; with recursive,
// a directory and everything beneath it.
func (c *Client) FSRemove(ctx context.Context, p string, recursive bool) error {
	_, err := c.fsOp(ctx, FSRequest{Op: "remove", Path: p, Recursive: recursive})
	return err
}

// FSRename renames the guest path from to to (rename(2): a file replaces
// a file, a directory an empty directory).
func (c *Client) FSRename(ctx context.Context, from, to string) error {
	_, err := c.fsOp(ctx, FSRequest{Op: "rename", Path: from, To: to})
	return err
}

type fsReply struct {
	Entry   *FSEntry  `json:"entry"`
	Entries []FSEntry `json:"-"` // from RawEntries, see decodeBounded
	// RawEntries is decoded one entry at a time up to the listing's max:
	// decoded whole, 32 MiB of "{}," would cost the host gigabytes.
	RawEntries json.RawMessage `json:"entries"`
	Error      *struct {
		Errno   string `json:"errno"`
		Message string `json:"message"`
	} `json:"error"`
}

// fsOp sends one request and reads its bounded reply. It is not a user's
// command, so it is bounded by DefaultSetupTimeout even when ctx is not.
func (c *Client) fsOp(ctx context.Context, req FSRequest) (fsReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return fsReply{}, err
	}
	opCtx, cancel := context.WithTimeout(ctx, DefaultSetupTimeout)
	defer cancel()
	out := &LimitedBuffer{Limit: maxFSReply}
	code, err := c.run(opCtx, runSpec{request: "subsystem", arg: "smolvm-fs", stdin: bytes.NewReader(body), stdout: out})
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: no answer within %s", ErrUnresponsive, DefaultSetupTimeout)
	}
	if err != nil {
		return fsReply{}, fmt.Errorf("guest: %s %s: %w", req.Op, req.Path, err)
	}
	if out.Truncated {
		return fsReply{}, fmt.Errorf("guest: %s %s: %w: reply larger than %d bytes", req.Op, req.Path, ErrAnswerTooLarge, maxFSReply)
	}
	var r fsReply
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return fsReply{}, fmt.Errorf("guest: %s %s: unreadable reply (exit status %d): %w", req.Op, req.Path, code, err)
	}
	if r.Error != nil {
		return fsReply{}, fsError(req.Op, req.Path, r.Error.Errno, r.Error.Message)
	}
	if len(r.RawEntries) > 0 {
		max := req.Max
		if max <= 0 {
			max = MaxListEntries
		}
		if err := decodeBounded(r.RawEntries, &r.Entries, max, "directory entries"); err != nil {
			return fsReply{}, fmt.Errorf("guest: %s %s: %w: %w", req.Op, req.Path, ErrUnsafe, err)
		}
		r.RawEntries = nil
	}
	return r, nil
}

// Errno returns the errno named name (such as "ENOENT"), if it is one
// the file API knows; others keep the guest's message.
func Errno(name string) (syscall.Errno, bool) {
	errnos := [...]syscall.Errno{unix.ENOENT, unix.EEXIST, unix.EISDIR, unix.ENOTDIR, unix.ENOTEMPTY,
		unix.EACCES, unix.EPERM, unix.EINVAL, unix.EXDEV, unix.EBUSY, unix.ENOSPC, unix.EROFS, unix.ELOOP,
		unix.ENAMETOOLONG, unix.E2BIG, unix.EMLINK, unix.EDQUOT, unix.EIO}
	for _, e := range errnos {
		if unix.ErrnoName(e) == name {
			return e, true
		}
	}
	return 0, false
}

// fsError is the guest's failure as the host's own would be: an
// *fs.PathError whose Err is the errno, so errors.Is matches
// fs.ErrNotExist, fs.ErrExist, fs.ErrPermission and syscall.EISDIR...
func fsError(op, p, errno, msg string) error {
	if e, ok := Errno(errno); ok {
		return &fs.PathError{Op: op, Path: p, Err: e}
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return fmt.Errorf("guest: %s %s: the guest says: %q", op, p, msg)
}

// checkEntry refuses what no honest guest sends.
func checkEntry(e FSEntry, listed bool) error {
	bad := func(why string) error { return fmt.Errorf("%w: entry %.100q: %s", ErrUnsafe, e.Name, why) }
	if listed && !ValidName(e.Name) {
		return bad("not a name a directory can hold")
	}
	if !listed && (e.Name == "" || strings.ContainsAny(e.Name, "\x00") || len(e.Name) > 255) {
		return bad("not a file name")
	}
	if len(e.Name) > 255 {
		return bad("a name longer than 255 bytes")
	}
	switch e.Type {
	case "file", "dir", "symlink", "fifo", "socket", "device", "chardev":
	default:
		return bad(fmt.Sprintf("unknown type %.20q", e.Type))
	}
	if e.Size < 0 {
		return bad("negative size")
	}
	if e.Perm > 0o777 {
		return bad("permission bits out of range")
	}
	if e.Type == "symlink" && (len(e.Target) >= maxLinkTarget || strings.ContainsRune(e.Target, 0)) {
		return bad("a link target no symlink can have")
	}
	if e.Type != "symlink" && e.Target != "" {
		return bad("a link target on what is not a symlink")
	}
	return nil
}

// Mode is e's type and permission bits as an fs.FileMode.
func (e FSEntry) Mode() fs.FileMode {
	m := fs.FileMode(e.Perm).Perm()
	switch e.Type {
	case "dir":
		m |= fs.ModeDir
	case "symlink":
		m |= fs.ModeSymlink
	case "fifo":
		m |= fs.ModeNamedPipe
	case "socket":
		m |= fs.ModeSocket
	case "device":
		m |= fs.ModeDevice
	case "chardev":
		m |= fs.ModeDevice | fs.ModeCharDevice
	}
	return m
}

// Time is e's modification time.
func (e FSEntry) Time() time.Time { return time.Unix(0, e.ModTime) }

// cleanRel reports whether p is "." or a clean relative path inside the
// watched directory.
func cleanRel(p string) bool {
	if p == "." {
		return true
	}
	return p != "" && len(p) <= unix.PathMax && path.Clean(p) == p && !strings.HasPrefix(p, "/") &&
		p != ".." && !strings.HasPrefix(p, "../") && !strings.ContainsRune(p, 0)
}
