package smolvm

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/guest"
)

// Limits of a tree copied as a tar stream (WriteTree, ReadTree).
const (
	MaxTreeEntries = 1 << 20
	MaxTreeDepth   = 256
	// MaxTreeListing bounds the directory listings a copy holds at once
	// (a directory's and its ancestors'), counted as the bytes the guest
	// sent for them, so that a listing without end cannot exhaust the
	// host's memory.
	MaxTreeListing = guest.MaxListing
)

// Stat returns what the guest says about guestPath (an absolute path),
// without following a final symlink. A missing path matches
// fs.ErrNotExist. The guest is not trusted: the answer is its word.
func (v *VM) Stat(ctx context.Context, guestPath string) (fs.FileInfo, error) {
	if err := checkGuestPath(guestPath); err != nil {
		return nil, opError("stat", v.id, err)
	}
	var fi fs.FileInfo
	err := v.withSFTP(ctx, func(c *sftp.Client) (err error) {
		fi, err = c.Lstat(guestPath)
		if err != nil {
			return fmt.Errorf("%s: %w", guestPath, err)
		}
		return nil
	})
	return fi, opError("stat", v.id, err)
}

// WriteTree unpacks the tar stream r into the guest directory guestDir,
// over one SFTP session. Entries must be relative paths without ".." (a
// leading "./" is fine), directories, regular files or symlinks (whose
// targets are kept verbatim); an entry beneath a symlink the archive
// itself made is refused, as are hard links and devices, all with an
// error matching ErrInvalid. Permission bits are kept. Each file is
// written to a temporary name and renamed into place. When guestDir does
// not exist yet the tree is unpacked beside it and renamed in only once
// complete, so a failure leaves nothing; into an existing directory it is
// merged, and a failure may leave part of it.
func (v *VM) WriteTree(ctx context.Context, guestDir string, r io.Reader) error {
	return v.WriteTreeWith(ctx, guestDir, r, CopyOptions{})
}

// WriteTreeWith is WriteTree with o: with Archive, files and directories
// get the modification times the archive gives them.
func (v *VM) WriteTreeWith(ctx context.Context, guestDir string, r io.Reader, o CopyOptions) error {
	if err := checkGuestPath(guestDir); err != nil {
		return opError("write tree", v.id, err)
	}
	guestDir = path.Clean(guestDir) // "/root/t/" is the directory /root/t
	return opError("write tree", v.id, v.withSFTP(ctx, func(c *sftp.Client) error {
		dst := guestDir
		fresh := false
		if fi, err := c.Lstat(guestDir); errors.Is(err, fs.ErrNotExist) {
			if err := c.MkdirAll(path.Dir(guestDir)); err != nil {
				return fmt.Errorf("create %s in the guest: %w", path.Dir(guestDir), err)
			}
			dst = path.Join(path.Dir(guestDir), ".smolvm-"+rand.Text())
			if err := c.Mkdir(dst); err != nil {
				return fmt.Errorf("%s: %w", guestDir, err)
			}
			fresh = true
		} else if err != nil {
			return fmt.Errorf("%s: %w", guestDir, err)
		} else if !fi.IsDir() {
			return &ValidationError{Field: "path", Value: guestDir, Reason: "is a " + guest.Kind(fi.Mode()) + ", not a directory to unpack a tree into"}
		}
		err := unpackTree(ctx, c, dst, r, v.symlink, o.Archive)
		if err == nil && fresh {
			if err = c.PosixRename(dst, guestDir); err != nil {
				err = fmt.Errorf("%s: %w", guestDir, err)
			}
		}
		if err != nil && fresh {
			c.RemoveAll(dst)
		}
		return err
	}))
}

// unpackTree unpacks r under dst; symlink makes a link with its target
// verbatim (the guest's SFTP server would clean a relative target). With
// times, entries get the archive's modification times.
func unpackTree(ctx context.Context, c *sftp.Client, dst string, r io.Reader, symlink func(ctx context.Context, target, link string) error, times bool) error {
	tr := tar.NewReader(r)
	links := map[string]bool{} // symlinks this archive made
	// A directory's time is set last: its entries change it.
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirs []dirTime
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := c.Chtimes(dirs[i].path, dirs[i].t, dirs[i].t); err != nil {
					return fmt.Errorf("set the time of %s: %w", dirs[i].path, err)
				}
			}
			return nil
		}
		if errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrFieldTooLong) {
			return &ValidationError{Field: "tar", Value: fmt.Sprintf("entry %d", n), Reason: err.Error()}
		}
		if err != nil {
			return fmt.Errorf("tar entry %d: %w", n, err) // the reader's own failure, such as a body limit
		}
		if n >= MaxTreeEntries {
			return &ValidationError{Field: "tar", Value: hdr.Name, Reason: fmt.Sprintf("more than %d entries", MaxTreeEntries)}
		}
		name, err := treeName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			if hdr.Typeflag == tar.TypeDir {
				continue
			}
			return &ValidationError{Field: "tar entry", Value: hdr.Name, Reason: "only a directory can be the archive's root"}
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if links[p] {
				return &ValidationError{Field: "tar entry", Value: hdr.Name, Reason: "lies beneath the symlink " + p + " the archive made, and would be written through it"}
			}
		}
		target := path.Join(dst, name)
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if links[name] {
				c.Remove(target)
				delete(links, name)
			}
			if err := c.MkdirAll(target); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := c.Chmod(target, mode|0o700); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if times {
				dirs = append(dirs, dirTime{target, hdr.ModTime})
			}
		case tar.TypeReg:
			if err := c.MkdirAll(path.Dir(target)); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			tmp := path.Join(path.Dir(target), ".smolvm-"+rand.Text())
			f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			_, err = f.ReadFrom(tr)
			if err == nil {
				err = f.Chmod(mode)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil && times {
				err = c.Chtimes(tmp, hdr.ModTime, hdr.ModTime)
			}
			if err == nil {
				// A rename replaces a symlink at target instead of
				// writing through it.
				err = c.PosixRename(tmp, target)
			}
			if err != nil {
				c.Remove(tmp)
				return fmt.Errorf("%s: %w", name, err)
			}
			delete(links, name)
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return &ValidationError{Field: "tar entry", Value: hdr.Name, Reason: "symlink with an empty or NUL-holding target"}
			}
			if err := c.MkdirAll(path.Dir(target)); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if fi, err := c.Lstat(target); err == nil && !fi.IsDir() {
				c.Remove(target)
			}
			if err := symlink(ctx, hdr.Linkname, target); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			links[name] = true
		default:
			return &ValidationError{Field: "tar entry", Value: hdr.Name, Reason: fmt.Sprintf("type %q is not supported: send directories, regular files and symlinks (tar --hard-dereference for hard links)", hdr.Typeflag)}
		}
	}
}

// treeName checks a tar entry name: relative, no "..", no NUL.
func treeName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", &ValidationError{Field: "tar entry", Value: fmt.Sprintf("%q", name), Reason: why}
	}
	if name == "" || strings.ContainsRune(name, 0) {
		return bad("is empty or holds a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return bad("is absolute: entries are relative to the directory they are unpacked into")
	}
	for _, el := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		if el == ".." {
			return bad(`holds "..": entries must stay inside the directory`)
		}
	}
	return path.Clean(name), nil
}

// ReadTree writes the guest directory guestDir to w as a tar stream, over
// one SFTP session: entries relative to guestDir, directories, regular
// files and symlinks (targets as the guest says); devices, FIFOs and
// sockets are left out. The guest is hostile: a name it lists that holds
// "/" or is "." or "..", a tree deeper than MaxTreeDepth or with more than
// MaxTreeEntries entries, or a file that ends before the size it claimed
// fails the copy (the stream is then incomplete, so the caller must not
// present it as whole). Modes lose setuid, setgid and sticky bits; a file
// that grows while it is read is cut at the size it had.
func (v *VM) ReadTree(ctx context.Context, guestDir string, w io.Writer) error {
	return v.ReadTreeWith(ctx, guestDir, w, CopyOptions{})
}

// ReadTreeWith is ReadTree with o: with Archive, modes keep group and
// other write (setuid, setgid and sticky still go).
func (v *VM) ReadTreeWith(ctx context.Context, guestDir string, w io.Writer, o CopyOptions) error {
	if err := checkGuestPath(guestDir); err != nil {
		return opError("read tree", v.id, err)
	}
	guestDir = path.Clean(guestDir)
	lim := new(guest.RecvLimit)
	return opError("read tree", v.id, v.withSFTPLimited(ctx, lim, func(c *sftp.Client) error {
		fi, err := c.Lstat(guestDir)
		if err != nil {
			return fmt.Errorf("%s: %w", guestDir, err)
		}
		if !fi.IsDir() {
			return &ValidationError{Field: "path", Value: guestDir, Reason: "is a " + guest.Kind(fi.Mode()) + ", not a directory"}
		}
		tw := tar.NewWriter(w)
		t := &treeWalk{ctx: ctx, c: c, tw: tw, lim: lim, listLeft: MaxTreeListing, mask: 0o022}
		if o.Archive {
			t.mask = 0
		}
		if err := t.dir(guestDir, "", 0); err != nil {
			return err
		}
		return tw.Close()
	}))
}

type treeWalk struct {
	ctx      context.Context
	c        *sftp.Client
	tw       *tar.Writer
	entries  int
	lim      *guest.RecvLimit
	listLeft int64       // of MaxTreeListing, not held by the listings being walked
	mask     fs.FileMode // permission bits the modes lose
}

func (t *treeWalk) dir(guestPath, rel string, depth int) error {
	if depth > MaxTreeDepth {
		return fmt.Errorf("%s: the guest's tree is deeper than %d levels", guestPath, MaxTreeDepth)
	}
	list, held, err := guest.ListDir(t.ctx, t.c, t.lim, guestPath, t.listLeft)
	if err != nil {
		return fmt.Errorf("%s: %w", guestPath, err)
	}
	// This listing is held until its directory is done.
	t.listLeft -= held
	defer func() { t.listLeft += held }()
	seen := make(map[string]bool, len(list))
	for _, fi := range list {
		name := fi.Name()
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return fmt.Errorf("%s: the guest listed an entry named %q, which no directory holds", guestPath, name)
		}
		// A name listed twice (a symlink, then a directory beneath
		// which files follow) would make a tar that writes through the
		// link when a client unpacks it naively.
		if seen[name] {
			return fmt.Errorf("%s: the guest listed %q twice, which no directory holds", guestPath, name)
		}
		seen[name] = true
		if t.entries++; t.entries > MaxTreeEntries {
			return fmt.Errorf("%s: the guest's tree has more than %d entries", guestPath, MaxTreeEntries)
		}
		src, relName := path.Join(guestPath, name), path.Join(rel, name)
		hdr := &tar.Header{Name: relName, Mode: int64(fi.Mode().Perm() &^ t.mask), ModTime: fi.ModTime(), Format: tar.FormatPAX}
		switch m := fi.Mode(); {
		case m.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, relName+"/", int64(m.Perm()&^t.mask)
			if err := t.tw.WriteHeader(hdr); err != nil {
				return err
			}
			if err := t.dir(src, relName, depth+1); err != nil {
				return err
			}
		case m&fs.ModeSymlink != 0:
			target, err := t.c.ReadLink(src)
			if err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			if target == "" || strings.ContainsRune(target, 0) {
				return fmt.Errorf("%s: the guest gave a symlink target no link holds", src)
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
			if err := t.tw.WriteHeader(hdr); err != nil {
				return err
			}
		case m.IsRegular():
			if err := t.file(src, hdr, fi.Size()); err != nil {
				return err
			}
		default:
			// Devices, FIFOs, sockets: nothing a copy can hold.
		}
	}
	return nil
}

func (t *treeWalk) file(src string, hdr *tar.Header, size int64) error {
	if size < 0 {
		return fmt.Errorf("%s: the guest claims a negative size", src)
	}
	f, err := t.c.Open(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	defer f.Close()
	hdr.Typeflag, hdr.Size = tar.TypeReg, size
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.CopyN(t.tw, f, size)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: ended after %d of the %d bytes the guest said it holds", src, n, size)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}
