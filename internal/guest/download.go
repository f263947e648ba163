package guest

import (
	"context"
	"crypto/rand"
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
	"golang.org/x/sys/unix"
)

// ErrUnsafe means the guest's SFTP server described an entry no honest
// file system has: a name that is not one path component, a name listed
// twice in one directory, a negative size, an empty or NUL-carrying link
// target, a tree deeper than maxDepth. The guest is root in its VM and
// may run any server it likes, so the copy stops there.
var ErrUnsafe = errors.New("unsafe entry from the guest")

// DestinationError says why the destination cannot take the source, such
// as a directory tree copied onto a file.
type DestinationError struct {
	Path   string
	Reason string
}

func (e *DestinationError) Error() string { return e.Path + ": " + e.Reason }

// maxDepth bounds how deep a downloaded tree may nest. Each level holds
// one open directory on the host, and a hostile server can describe an
// endless chain of directories.
const maxDepth = 256

// MaxEntries bounds how many entries a downloaded tree may have: each
// costs the host an inode (a directory also a block) however small, and a
// hostile guest can describe millions of empty ones.
const MaxEntries = 1 << 20

// HostMode is the mode a downloaded file or directory gets on the host:
// the guest's permission bits without setuid, setgid and sticky, and
// without group and other write (what cp gives under umask 022). Modes
// come from the guest, and a guest must not hand the host a setuid file or
// one other local users may change.
func HostMode(m fs.FileMode) fs.FileMode { return m.Perm() &^ 0o022 }

// Download copies the guest file or directory src to dst on the host over
// c, as `cp -r` does: if dst is an existing directory, src lands inside it
// under its own name ("." lands in dst itself); otherwise src becomes dst.
//
// Only dst itself is the host user's path and is resolved as given.
// Everything beneath it is written through os.Root handles that never
// follow a symlink: files go to fresh temporary names and are renamed into
// place, so a symlink or hard link already at a name (say, one an earlier
// copy made) is replaced, never written through; a directory is entered
// only if it is a real directory. A new tree is built under a temporary
// name and renamed into place, so a failed copy leaves nothing behind.
// Symlinks are copied as symlinks with their targets verbatim; modes are
// masked by hostMode; devices, FIFOs and sockets are skipped with a
// warning on log. A regular file is copied up to the size the guest
// reported, and refused if the host's file system has less room free.
func Download(ctx context.Context, c *sftp.Client, src, dst string, log *slog.Logger) error {
	return DownloadLimited(ctx, c, nil, src, dst, log)
}

// DownloadLimited is Download with c's listings received through lim (c
// made by SFTPLimited(lim)), at most MaxListing held at once.
func DownloadLimited(ctx context.Context, c *sftp.Client, lim *RecvLimit, src, dst string, log *slog.Logger) error {
	return download(ctx, c, lim, src, dst, log, MaxEntries, CopyOptions{})
}

// DownloadWith is DownloadLimited with o.
func DownloadWith(ctx context.Context, c *sftp.Client, lim *RecvLimit, src, dst string, log *slog.Logger, o CopyOptions) error {
	return download(ctx, c, lim, src, dst, log, MaxEntries, o)
}

func download(ctx context.Context, c *sftp.Client, lim *RecvLimit, src, dst string, log *slog.Logger, maxEntries int, o CopyOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := c.Stat(src) // the user named src: the guest resolves its links
	if err != nil {
		return fmt.Errorf("%s in the guest: %w", src, err)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s in the guest is a %s, not a file or directory", src, Kind(fi.Mode()))
	}
	dir, name, err := HostLanding(dst, path.Base(src), fi.IsDir())
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	d := &downloader{c: c, log: log, lim: lim, listLeft: MaxListing, entriesLeft: maxEntries, o: o}
	if !fi.IsDir() {
		return d.file(ctx, root, dir, name, src, fi)
	}
	return d.top(ctx, root, dir, name, src, fi)
}

// HostLanding says in which host directory the copy of a guest entry
// named base lands, and under which name: "." for the directory itself.
func HostLanding(dst, base string, isDir bool) (dir, name string, err error) {
	st, err := os.Stat(dst)
	switch {
	case err == nil && st.IsDir():
		if !isDir && !ValidName(base) {
			return "", "", &DestinationError{dst, "is a directory; name the file to copy to"}
		}
		if !ValidName(base) {
			return dst, ".", nil
		}
		return dst, base, nil
	case err == nil && isDir:
		return "", "", &DestinationError{dst, "exists and is not a directory; a directory cannot be copied onto it"}
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if strings.HasSuffix(dst, string(filepath.Separator)) && !isDir {
			return "", "", &DestinationError{dst, "no such directory; create it first or drop the trailing slash"}
		}
	default:
		return "", "", err
	}
	clean := filepath.Clean(dst)
	dir, name = filepath.Dir(clean), filepath.Base(clean)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	return dir, name, nil
}

// ValidName reports whether name is one path component: not empty, not
// "." or "..", no "/" and no NUL.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

type downloader struct {
	c        *sftp.Client
	log      *slog.Logger
	lim      *RecvLimit
	listLeft int64 // of MaxListing, not held by the listings being copied
	// entriesLeft counts down from MaxEntries, over the whole tree.
	entriesLeft int
	o           CopyOptions
}

// mode is the host mode of a copy of what the guest describes as m.
func (d *downloader) mode(m fs.FileMode) fs.FileMode {
	if d.o.Archive {
		return m.Perm()
	}
	return HostMode(m)
}

// keepTime gives name in dir the guest's modification time, with Archive.
func (d *downloader) keepTime(dir *os.Root, name string, e fs.FileInfo) error {
	if !d.o.Archive {
		return nil
	}
	return dir.Chtimes(name, e.ModTime(), e.ModTime())
}

// top copies the guest directory src to name in parent (hostDir on the
// host).
func (d *downloader) top(ctx context.Context, parent *os.Root, hostDir, name, src string, fi fs.FileInfo) error {
	if name == "." {
		return d.fill(ctx, parent, hostDir, src, 1)
	}
	hp := filepath.Join(hostDir, name)
	st, err := parent.Lstat(name)
	switch {
	case err == nil && st.IsDir():
		return d.merge(ctx, parent, hp, name, src, st, 1)
	case err == nil:
		return &DestinationError{hp, "exists and is not a directory; a directory cannot be copied onto it"}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	tmp := tempName()
	if err := parent.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	if err := d.newDir(ctx, parent, hp, tmp, src, fi, 1); err != nil {
		parent.RemoveAll(tmp)
		return err
	}
	if err := parent.Rename(tmp, name); err != nil {
		parent.RemoveAll(tmp)
		return err
	}
	return nil
}

// fill copies the entries of the guest directory src into dir (hostDir on
// the host).
func (d *downloader) fill(ctx context.Context, dir *os.Root, hostDir, src string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: %s: nested deeper than %d directories", ErrUnsafe, src, maxDepth)
	}
	ents, held, err := ListDir(ctx, d.c, d.lim, src, d.listLeft)
	if err != nil {
		return fmt.Errorf("list %s in the guest: %w", src, err)
	}
	d.listLeft -= held
	defer func() { d.listLeft += held }()
	seen := make(map[string]bool, len(ents))
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		if !ValidName(name) {
			return fmt.Errorf("%w: %s lists the name %q", ErrUnsafe, src, name)
		}
		if seen[name] {
			return fmt.Errorf("%w: %s lists %q twice", ErrUnsafe, src, name)
		}
		seen[name] = true
		if d.entriesLeft--; d.entriesLeft < 0 {
			return fmt.Errorf("%w: the tree has more than %d entries", ErrUnsafe, MaxEntries)
		}
		gp, hp := path.Join(src, name), filepath.Join(hostDir, name)
		switch m := e.Mode(); {
		case m.IsDir():
			err = d.dir(ctx, dir, hp, name, gp, e, depth+1)
		case m.IsRegular():
			err = d.file(ctx, dir, hostDir, name, gp, e)
		case m&fs.ModeSymlink != 0:
			err = d.symlink(dir, hp, name, gp)
		default:
			d.log.Warn("download: skipped, not a file, directory or symlink", "path", gp, "type", Kind(m))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// dir copies the guest directory gp to name in parent.
func (d *downloader) dir(ctx context.Context, parent *os.Root, hp, name, gp string, e fs.FileInfo, depth int) error {
	st, err := parent.Lstat(name)
	switch {
	case err == nil && st.IsDir():
		return d.merge(ctx, parent, hp, name, gp, st, depth)
	case err == nil && st.Mode()&fs.ModeSymlink != 0:
		// A link where the guest has a directory (an earlier copy may
		// have made it) is replaced, never followed.
		if err := parent.Remove(name); err != nil {
			return err
		}
	case err == nil:
		return &DestinationError{hp, "exists and is not a directory"}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := parent.Mkdir(name, 0o700); err != nil {
		return err
	}
	return d.newDir(ctx, parent, hp, name, gp, e, depth)
}

// merge copies the guest directory gp into the existing host directory
// name, whose mode stays as it is.
func (d *downloader) merge(ctx context.Context, parent *os.Root, hp, name, gp string, st fs.FileInfo, depth int) error {
	sub, err := openDir(parent, name, st)
	if err != nil {
		return err
	}
	defer sub.Close()
	return d.fill(ctx, sub, hp, gp, depth)
}

// newDir fills the directory name this copy just made, then gives it the
// guest directory's mode: last, so a read-only directory still takes its
// entries.
func (d *downloader) newDir(ctx context.Context, parent *os.Root, hp, name, gp string, e fs.FileInfo, depth int) error {
	st, err := parent.Lstat(name)
	if err != nil {
		return err
	}
	sub, err := openDir(parent, name, st)
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := d.fill(ctx, sub, hp, gp, depth); err != nil {
		return err
	}
	if err := sub.Chmod(".", d.mode(e.Mode())); err != nil {
		return err
	}
	return d.keepTime(sub, ".", e)
}

// openDir opens name in parent as a root of its own, provided it is still
// the real directory st (Lstat'ed), not a symlink swapped in since.
func openDir(parent *os.Root, name string, st fs.FileInfo) (*os.Root, error) {
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", name)
	}
	sub, err := parent.OpenRoot(name)
	if err != nil {
		return nil, err
	}
	got, err := sub.Stat(".")
	if err != nil || !os.SameFile(st, got) {
		sub.Close()
		return nil, fmt.Errorf("%s changed while it was being copied into", name)
	}
	return sub, nil
}

// file copies the guest file gp (described by e) to name in dir.
func (d *downloader) file(ctx context.Context, dir *os.Root, hostDir, name, gp string, e fs.FileInfo) error {
	hp := filepath.Join(hostDir, name)
	size := e.Size()
	if size < 0 {
		return fmt.Errorf("%w: %s has size %d", ErrUnsafe, gp, size)
	}
	if st, err := dir.Lstat(name); err == nil && st.IsDir() {
		return &DestinationError{hp, "is a directory; a file cannot replace it"}
	}
	in, err := d.c.Open(gp)
	if err != nil {
		return fmt.Errorf("open %s in the guest: %w", gp, err)
	}
	defer in.Close()
	// A fresh name (O_EXCL never follows a link) renamed over the old one:
	// a failed copy leaves the old file, and a link at name is replaced
	// rather than written through.
	tmp := tempName()
	out, err := dir.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = func() error {
		if err := checkSpace(out, size); err != nil {
			return fmt.Errorf("%s: %w", gp, err)
		}
		_, err := in.WriteTo(&capWriter{ctx: ctx, w: out, n: size})
		if err != nil && !errors.Is(err, errCapped) {
			return fmt.Errorf("download %s: %w", gp, err)
		}
		return out.Chmod(d.mode(e.Mode()))
	}()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = d.keepTime(dir, tmp, e)
	}
	if err == nil {
		err = dir.Rename(tmp, name)
	}
	if err != nil {
		dir.Remove(tmp)
		return err
	}
	return nil
}

// symlink copies the guest symlink gp to name in dir, its target verbatim.
func (d *downloader) symlink(dir *os.Root, hp, name, gp string) error {
	target, err := d.c.ReadLink(gp)
	if err != nil {
		return fmt.Errorf("read link %s in the guest: %w", gp, err)
	}
	if target == "" || strings.ContainsRune(target, 0) || len(target) >= unix.PathMax {
		return fmt.Errorf("%w: %s links to %q", ErrUnsafe, gp, target)
	}
	if st, err := dir.Lstat(name); err == nil && st.IsDir() {
		return &DestinationError{hp, "is a directory; a symlink cannot replace it"}
	}
	tmp := tempName()
	if err := dir.Symlink(target, tmp); err != nil {
		return err
	}
	if err := dir.Rename(tmp, name); err != nil {
		dir.Remove(tmp)
		return err
	}
	return nil
}

// checkSpace refuses a file larger than the room left where f lives: the
// size comes from the guest, which may announce an exabyte.
func checkSpace(f *os.File, size int64) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return nil // cannot tell; a full disk still stops the write
	}
	if free := st.Bavail * uint64(st.Bsize); uint64(size) > free {
		return fmt.Errorf("the guest says it holds %d bytes, more than the %d bytes free on the host", size, free)
	}
	return nil
}

// errCapped ends a copy at the size the guest announced.
var errCapped = errors.New("size reached")

// capWriter passes at most n bytes to w, stops once ctx is done, and
// reports errCapped when more arrive: a file that grows while it is being
// copied is copied as it was when listed.
type capWriter struct {
	ctx context.Context
	w   io.Writer
	n   int64
}

func (c *capWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	capped := false
	if int64(len(p)) > c.n {
		p, capped = p[:c.n], true
	}
	n, err := c.w.Write(p)
	c.n -= int64(n)
	if err == nil && capped {
		err = errCapped
	}
	return n, err
}

// tempName is a fresh name for a file or directory being made.
func tempName() string { return ".smolvm-" + rand.Text() }

// Kind names the type of file m is, for messages: "directory", "FIFO"...
func Kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "file"
	}
	return "special file"
}
