package apiclient

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/shell"
	"github.com/smolvm/smolvm/internal/untar"
)

// WriteFile streams r into the guest file guestPath with mode perm
// (0 = 0644).
func (c *Client) WriteFile(ctx context.Context, id, guestPath string, r io.Reader, perm fs.FileMode) error {
	if perm == 0 {
		perm = 0o644
	}
	h := http.Header{api.FileModeHeader: {fmt.Sprintf("%04o", perm.Perm())}}
	resp, err := c.send(ctx, request{method: http.MethodPut, path: "/vms/" + esc(id) + "/files",
		query: url.Values{"path": {guestPath}}, body: r, ctype: api.Binary, header: h})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// WriteTar unpacks the tar stream r in the guest directory guestDir.
func (c *Client) WriteTar(ctx context.Context, id, guestDir string, r io.Reader) error {
	return c.writeTar(ctx, id, guestDir, r, false)
}

// writeTar is WriteTar; with archive the entries get their times.
func (c *Client) writeTar(ctx context.Context, id, guestDir string, r io.Reader, archive bool) error {
	q := url.Values{"path": {guestDir}}
	if archive {
		q.Set("archive", "true")
	}
	resp, err := c.send(ctx, request{method: http.MethodPut, path: "/vms/" + esc(id) + "/files",
		query: q, body: r, ctype: api.Tar})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Remote is a guest file or tree being read: the file's bytes (IsTar
// false, with its Mode) or a tar of a directory.
type Remote struct {
	io.ReadCloser
	IsTar   bool
	Mode    fs.FileMode
	ModTime time.Time // a file's, if the server said
}

// ReadFile opens the guest path for reading: a file's bytes, or a tar of
// a directory. The caller closes it.
func (c *Client) ReadFile(ctx context.Context, id, guestPath string) (*Remote, error) {
	return c.readFile(ctx, id, guestPath, false)
}

// readFile is ReadFile; with archive a tree's modes keep group and other
// write.
func (c *Client) readFile(ctx context.Context, id, guestPath string, archive bool) (*Remote, error) {
	q := url.Values{"path": {guestPath}}
	if archive {
		q.Set("archive", "true")
	}
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/vms/" + esc(id) + "/files", query: q})
	if err != nil {
		return nil, err
	}
	r := &Remote{ReadCloser: resp.Body, Mode: 0o644}
	if t, err := time.Parse(time.RFC3339Nano, resp.Header.Get(api.FileMtimeHeader)); err == nil {
		r.ModTime = t
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && mt == api.Tar {
		r.IsTar = true
	}
	if m, err := strconv.ParseUint(resp.Header.Get(api.FileModeHeader), 8, 32); err == nil {
		r.Mode = fs.FileMode(m).Perm()
	}
	return r, nil
}

// guestKind says what the guest has at p: "dir", "other" or "none". It
// asks the guest's shell, as the files API has no stat.
func (c *Client) guestKind(ctx context.Context, id, p string) (string, error) {
	q := shell.Quote(p)
	res, err := c.Exec(ctx, id, api.Exec{Cmd: "if [ -d " + q + " ]; then echo dir; elif [ -e " + q + " ] || [ -L " + q + " ]; then echo other; else echo none; fi"})
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 || res.Stdout == nil {
		return "", fmt.Errorf("%s in the guest: cannot tell what it is (exit %d)", p, res.ExitCode)
	}
	switch k := strings.TrimSpace(*res.Stdout); k {
	case "dir", "other", "none":
		return k, nil
	}
	return "", fmt.Errorf("%s in the guest: cannot tell what it is", p)
}

// destinationError is a copy's destination that cannot take it.
func destinationError(p, reason string) error {
	return fmt.Errorf("%w: %s: %s", smolvm.ErrInvalid, p, reason)
}

// Upload copies a local file or directory tree into the guest as the
// SDK's VM.Upload does (cp -r): into guestPath if it is an existing
// directory, under local's own name; otherwise as guestPath. Files are
// streamed; symlinks are copied as symlinks, never followed, and nothing
// outside local is read. log (nil: none) hears about skipped entries.
func (c *Client) Upload(ctx context.Context, id, local, guestPath string, log *slog.Logger) error {
	return c.UploadWith(ctx, id, local, guestPath, log, smolvm.CopyOptions{})
}

// UploadWith is Upload with o (smolvm.CopyOptions: Archive keeps
// modification times, as the SDK's UploadWith).
func (c *Client) UploadWith(ctx context.Context, id, local, guestPath string, log *slog.Logger, o smolvm.CopyOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !path.IsAbs(guestPath) {
		return destinationError(guestPath, "give an absolute guest path, such as /root/"+path.Base(guestPath))
	}
	fi, err := os.Stat(local)
	if err != nil {
		return err
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s, not a file or directory", local, fi.Mode().Type())
	}
	kind, err := c.guestKind(ctx, id, guestPath)
	if err != nil {
		return err
	}
	base := filepath.Base(local)
	target := path.Clean(guestPath)
	switch {
	case kind == "dir" && !guest.ValidName(base) && !fi.IsDir():
		return destinationError(guestPath, "is a directory in the guest; name the file to copy to")
	case kind == "dir" && guest.ValidName(base):
		target = path.Join(target, base)
	case kind == "other" && fi.IsDir():
		return destinationError(guestPath, "exists in the guest and is not a directory; a directory cannot be copied onto it")
	case kind == "none" && strings.HasSuffix(guestPath, "/") && !fi.IsDir():
		return destinationError(guestPath, "no such directory in the guest; create it first or drop the trailing slash")
	}
	if !fi.IsDir() && !o.Archive {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		return c.WriteFile(ctx, id, target, f, fi.Mode().Perm())
	}
	// A tree; with Archive one file too, as a tar of one entry into its
	// directory, which carries its time.
	dir, only := target, ""
	if !fi.IsDir() {
		dir, only = path.Dir(target), path.Base(target)
	}
	pr, pw := io.Pipe()
	treeErr := make(chan error, 1)
	go func() {
		var err error
		if only != "" {
			err = writeOne(pw, local, only, fi)
		} else {
			err = writeTree(ctx, pw, local, log)
		}
		pw.CloseWithError(err)
		treeErr <- err
	}()
	err = c.writeTar(ctx, id, dir, pr, o.Archive)
	pr.CloseWithError(errUploadEnded)
	// A local failure (a file that changed, a read error) explains a
	// failed upload better than the broken request it caused.
	if te := <-treeErr; err != nil && te != nil && !errors.Is(te, errUploadEnded) {
		return te
	}
	return err
}

// errUploadEnded stops a tree's tar once its request is over.
var errUploadEnded = errors.New("upload ended")

// writeOne writes the file local (described by fi) to w as a tar of one
// entry named name.
func writeOne(w io.Writer, local, name string, fi fs.FileInfo) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	if got, err := f.Stat(); err != nil || !os.SameFile(fi, got) {
		return fmt.Errorf("%s changed while it was being copied", local)
	}
	tw := tar.NewWriter(w)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return err
	}
	return tw.Close()
}

// writeTree writes the tree at dir to w as a tar, reading only inside dir.
func writeTree(ctx context.Context, w io.Writer, dir string, log *slog.Logger) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tw := tar.NewWriter(w)
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch m := info.Mode(); {
		case m.IsDir(), m.IsRegular():
		case m&fs.ModeSymlink != 0:
			if link, err = root.Readlink(p); err != nil {
				return err
			}
		default:
			log.Warn("upload: skipped, not a file, directory or symlink", "path", filepath.Join(dir, p), "type", m.Type().String())
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = p
		if info.IsDir() {
			hdr.Name = p + "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// Open follows a symlink swapped in since the walk (within dir
		// only): still send only the file the walk saw.
		if got, err := f.Stat(); err != nil || !os.SameFile(info, got) {
			return fmt.Errorf("%s changed while it was being copied", filepath.Join(dir, p))
		}
		_, err = io.CopyN(tw, f, info.Size())
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// Download copies a guest file or tree to local as the SDK's
// VM.Download does (cp -r): into local if it is an existing directory,
// under the guest entry's own name; otherwise as local. The guest is not
// trusted: a tree is unpacked in a new directory beside the destination
// (every path resolved inside it), stripped of setuid/setgid/sticky and
// group/other write, devices, FIFOs and sockets, and only then moved into
// place; a file is written to a temporary file and renamed.
func (c *Client) Download(ctx context.Context, id, guestPath, local string, log *slog.Logger) error {
	return c.DownloadWith(ctx, id, guestPath, local, log, smolvm.CopyOptions{})
}

// DownloadWith is Download with o: with Archive the modes keep group and
// other write and a file keeps its modification time (a tree's entries
// keep theirs either way: they come in a tar).
func (c *Client) DownloadWith(ctx context.Context, id, guestPath, local string, log *slog.Logger, o smolvm.CopyOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := c.readFile(ctx, id, guestPath, o.Archive)
	if err != nil {
		return err
	}
	defer r.Close()
	dir, name, err := hostLanding(local, path.Base(guestPath), r.IsTar)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tmp := ".smolvm-" + rand.Text()
	if !r.IsTar {
		f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if err == nil {
			err = f.Chmod(hostMode(r.Mode, o))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && o.Archive && !r.ModTime.IsZero() {
			err = root.Chtimes(tmp, r.ModTime, r.ModTime)
		}
		if err == nil {
			err = root.Rename(tmp, name)
		}
		if err != nil {
			root.Remove(tmp)
			return c.streamError(ctx, err)
		}
		return nil
	}
	if err := root.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	defer root.RemoveAll(tmp)
	if _, err := untar.Apply(filepath.Join(dir, tmp), r, untar.Options{}); err != nil {
		return c.streamError(ctx, fmt.Errorf("%s from the guest: %w", guestPath, err))
	}
	if err := sanitize(root, tmp, log, o); err != nil {
		return err
	}
	if name != "." {
		if _, err := root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			return root.Rename(tmp, name)
		}
	}
	return merge(root, tmp, name)
}

// sanitize strips what the guest may not bring to the host from the tree
// at dir (inside root): special files go, modes are masked.
func sanitize(root *os.Root, dir string, log *slog.Logger, o smolvm.CopyOptions) error {
	return fs.WalkDir(root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch t := d.Type(); {
		case t&fs.ModeSymlink != 0:
			return nil // copied as it is, never followed
		case t.IsDir(), t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := hostMode(info.Mode(), o)
			if t.IsDir() {
				mode |= 0o700 // the copy must be able to fill it
			}
			return root.Chmod(p, mode)
		default:
			log.Warn("download: skipped, not a file, directory or symlink", "path", strings.TrimPrefix(p, dir+"/"), "type", t.String())
			return root.Remove(p)
		}
	})
}

// hostMode is the mode a download gets on the host.
func hostMode(m fs.FileMode, o smolvm.CopyOptions) fs.FileMode {
	if o.Archive {
		return m.Perm()
	}
	return guest.HostMode(m)
}

// merge moves the tree at src into the existing directory dst (both
// inside root): new entries are moved over, files replace files,
// directories merge; a directory where a file is (or the other way
// round) is an error.
func merge(root *os.Root, src, dst string) error {
	return fs.WalkDir(root.FS(), src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, src), "/")
		if rel == "" {
			return nil
		}
		to := path.Join(dst, rel)
		st, err := root.Lstat(to)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Rename(p, to); err != nil {
				return err
			}
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		case err != nil:
			return err
		case d.IsDir() && st.IsDir():
			return nil // merge into it
		case d.IsDir() || st.IsDir():
			return destinationError(to, "a directory and a file meet here; remove one first")
		}
		return root.Rename(p, to)
	})
}

// hostLanding is guest.HostLanding, its refusals as this package's.
func hostLanding(dst, base string, isDir bool) (dir, name string, err error) {
	dir, name, err = guest.HostLanding(dst, base, isDir)
	var de *guest.DestinationError
	if errors.As(err, &de) {
		return "", "", destinationError(de.Path, de.Reason)
	}
	return dir, name, err
}
