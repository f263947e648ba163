// Package untar extracts root filesystem tarballs and OCI image layers
// into a directory, safely: every path is resolved inside the directory
// (os.Root), so no entry, symlink or hard link can reach outside it.
package untar

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// ErrCorrupt is returned for an archive that cannot be read to its end.
var ErrCorrupt = errors.New("corrupt archive")

// ErrUnsafe is returned for an entry that would land outside the target
// directory or that names one with "..".
var ErrUnsafe = errors.New("unsafe archive entry")

// Options say how entries are applied.
type Options struct {
	// Whiteouts applies OCI/AUFS whiteouts: ".wh.NAME" deletes NAME from
	// what earlier layers put there, ".wh..wh..opq" empties a directory of
	// what earlier layers put there. Off: such files are kept as files.
	Whiteouts bool
	// Owners applies each entry's uid and gid (needs root).
	Owners bool
	// Devices creates character and block device nodes (needs root);
	// without it they are skipped and counted.
	Devices bool
}

// Stats count what Apply did.
type Stats struct {
	Entries        int
	Bytes          int64
	SkippedDevices int
	Whiteouts      int
}

// Decompress returns r uncompressed, recognising gzip, zstd, xz and bzip2
// by their magic bytes; anything else is passed through.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %w", ErrCorrupt, err)
		}
		return gz, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrCorrupt, err)
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		x, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: xz: %w", ErrCorrupt, err)
		}
		return io.NopCloser(x), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(br)), nil
	}
	return io.NopCloser(br), nil
}

// Apply extracts the tar stream r into dir, which must exist. Entries are
// applied in order on top of what dir holds (an existing non-directory is
// replaced), with modes including setuid/setgid/sticky, owners, hard links,
// symlinks, extended attributes and modification times.
func Apply(dir string, r io.Reader, opt Options) (Stats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Stats{}, err
	}
	defer root.Close()
	a := &applier{root: root, opt: opt, seen: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return a.stats, err
		}
	}
	// Directory times last: creating their entries changed them.
	for _, d := range slices.Backward(a.dirTimes) {
		root.Chtimes(d.name, d.mtime, d.mtime)
	}
	return a.stats, nil
}

type applier struct {
	root     *os.Root
	opt      Options
	seen     map[string]bool // paths this archive created, for opaque dirs
	stats    Stats
	dirTimes []dirTime
}

type dirTime struct {
	name  string
	mtime time.Time
}

// clean turns an archive path into one relative to the root, rejecting
// any that climbs with "..".
func clean(name string) (string, error) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q", ErrUnsafe, name)
		}
	}
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "" {
		p = "."
	}
	return p, nil
}

func (a *applier) entry(hdr *tar.Header, body io.Reader) error {
	name, err := clean(hdr.Name)
	if err != nil {
		return err
	}
	a.stats.Entries++
	base, parent := path.Base(name), path.Dir(name)
	if parent, err = a.resolve(parent); err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	if name != "." {
		name = path.Join(parent, base)
	}
	if a.opt.Whiteouts && strings.HasPrefix(base, ".wh.") {
		a.stats.Whiteouts++
		if base == ".wh..wh..opq" {
			return a.opaque(parent) // parent is resolved
		}
		target := path.Join(parent, strings.TrimPrefix(base, ".wh."))
		if a.seen[target] {
			return nil // whiteouts hide only what lower layers made
		}
		if err := a.root.RemoveAll(target); err != nil {
			return fmt.Errorf("whiteout %s: %w", target, err)
		}
		return nil
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return a.meta(name, hdr, nil)
		}
		return fmt.Errorf("%w: %q is the root but not a directory", ErrUnsafe, hdr.Name)
	}
	if err := a.root.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	// Replace whatever is there, unless a directory meets a directory.
	if fi, err := a.root.Lstat(name); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := a.root.RemoveAll(name); err != nil {
				return fmt.Errorf("%s: replace: %w", hdr.Name, err)
			}
		}
	}
	a.markSeen(name)
	mode := fileMode(hdr.Mode)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := a.root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if err := a.meta(name, hdr, nil); err != nil {
			return err
		}
		a.dirTimes = append(a.dirTimes, dirTime{name, hdr.ModTime})
		return nil
	case tar.TypeReg, tar.TypeRegA:
		f, err := a.root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		n, err := io.Copy(f, body)
		a.stats.Bytes += n
		if err == nil {
			err = a.meta(name, hdr, f)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) {
				return fmt.Errorf("%w: %s: %w", ErrCorrupt, hdr.Name, err)
			}
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		return a.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	case tar.TypeSymlink:
		if err := a.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if a.opt.Owners {
			return a.root.Lchown(name, hdr.Uid, hdr.Gid)
		}
		return nil
	case tar.TypeLink:
		target, err := clean(hdr.Linkname)
		if err != nil {
			return err
		}
		tdir, err := a.resolve(path.Dir(target))
		if err != nil {
			return fmt.Errorf("%s: hard link to %s: %w", hdr.Name, hdr.Linkname, err)
		}
		target = path.Join(tdir, path.Base(target))
		if err := a.root.Link(target, name); err != nil {
			return fmt.Errorf("%s: hard link to %s: %w", hdr.Name, hdr.Linkname, err)
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if hdr.Typeflag != tar.TypeFifo && !a.opt.Devices {
			a.stats.SkippedDevices++
			delete(a.seen, name)
			return nil
		}
		return a.mknod(name, hdr, mode)
	case tar.TypeXGlobalHeader:
		return nil
	}
	// Other types (sparse files of old GNU tar, say) carry nothing a root
	// filesystem needs; skip them rather than fail the whole image.
	delete(a.seen, name)
	return nil
}

func (a *applier) mknod(name string, hdr *tar.Header, mode os.FileMode) error {
	d, err := a.root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	m := uint32(mode.Perm())
	switch hdr.Typeflag {
	case tar.TypeChar:
		m |= unix.S_IFCHR
	case tar.TypeBlock:
		m |= unix.S_IFBLK
	default:
		m |= unix.S_IFIFO
	}
	dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	if err := unix.Mknodat(int(d.Fd()), path.Base(name), m, dev); err != nil {
		return fmt.Errorf("%s: mknod: %w", hdr.Name, err)
	}
	return a.meta(name, hdr, nil)
}

// meta applies owner, mode (after the owner: chown clears setuid) and
// extended attributes, through f when the entry is open.
func (a *applier) meta(name string, hdr *tar.Header, f *os.File) error {
	mode := fileMode(hdr.Mode)
	if f != nil {
		if a.opt.Owners {
			if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
				return err
			}
		}
		if err := f.Chmod(mode); err != nil {
			return err
		}
		return setXattrs(int(f.Fd()), hdr)
	}
	if a.opt.Owners {
		if err := a.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if err := a.root.Chmod(name, mode); err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeDir && hasXattrs(hdr) {
		d, err := a.root.Open(name)
		if err != nil {
			return err
		}
		defer d.Close()
		return setXattrs(int(d.Fd()), hdr)
	}
	return nil
}

func hasXattrs(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			return true
		}
	}
	return false
}

// setXattrs applies the entry's extended attributes (file capabilities,
// say). Attributes the filesystem or our privileges refuse are dropped.
func setXattrs(fd int, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		err := unix.Fsetxattr(fd, attr, []byte(v), 0)
		if err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%s: xattr %s: %w", hdr.Name, attr, err)
		}
	}
	return nil
}

// markSeen records that this archive made name and, implicitly, its parents.
func (a *applier) markSeen(name string) {
	for p := name; p != "." && !a.seen[p]; p = path.Dir(p) {
		a.seen[p] = true
	}
}

// maxLinks bounds symlink resolution, as the kernel's ELOOP does.
const maxLinks = 40

func (a *applier) resolve(p string) (string, error) { return Resolve(a.root, p) }

// Resolve follows the symlinks in the clean relative path p inside root
// as if root were "/": absolute targets start again at the root, and ".."
// stops there. What does not exist yet is kept as named. So a layer may
// write through var/run -> /run, and nothing resolves outside the root;
// os.Root still guards every operation on the result.
func Resolve(root *os.Root, p string) (string, error) {
	parts := strings.Split(p, "/")
	cur, links := ".", 0
	for i := 0; i < len(parts); i++ {
		switch part := parts[i]; part {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, parts[i])
		fi, err := root.Lstat(next)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%w: too many symlinks resolving %q", ErrUnsafe, p)
		}
		target, err := root.Readlink(next)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			cur = "."
		}
		parts = append(strings.Split(target, "/"), parts[i+1:]...)
		i = -1
	}
	return cur, nil
}

// opaque removes what earlier layers put in dir, keeping this layer's.
func (a *applier) opaque(dir string) error {
	d, err := a.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if a.seen[p] {
			continue
		}
		if err := a.root.RemoveAll(p); err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
	}
	return nil
}

func fileMode(m int64) os.FileMode {
	mode := os.FileMode(m).Perm()
	if m&04000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&02000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&01000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}
