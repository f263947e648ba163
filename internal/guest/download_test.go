package guest_test

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/guest"
)

// fakeEntry is what a hostile SFTP server says about one guest path.
type fakeEntry struct {
	name   string // as listed by the parent, verbatim
	mode   fs.FileMode
	size   int64
	data   string // file contents; endless repeats it forever
	target string // symlink target
	// endless makes the file's contents never end.
	endless bool
}

func (e fakeEntry) Name() string       { return e.name }
func (e fakeEntry) Size() int64        { return e.size }
func (e fakeEntry) Mode() fs.FileMode  { return e.mode }
func (e fakeEntry) ModTime() time.Time { return time.Unix(0, 0) }
func (e fakeEntry) IsDir() bool        { return e.mode.IsDir() }
func (e fakeEntry) Sys() any           { return nil }

// fakeGuest serves a made-up tree: stat answers for paths, and listings of
// directories whose names may be anything at all.
type fakeGuest struct {
	stat map[string]fakeEntry   // by the path the client asks for
	list map[string][]fakeEntry // directory path -> entries, names verbatim
	// endlessDir is a directory whose listing never ends.
	endlessDir string
}

// endlessListing lists f0, f1, ... and never says it is done.
type endlessListing struct{}

func (endlessListing) ListAt(out []os.FileInfo, off int64) (int, error) {
	for i := range out {
		out[i] = fakeEntry{name: fmt.Sprintf("f%d", off+int64(i)), mode: 0o644}
	}
	return len(out), nil
}

func (g *fakeGuest) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	e, ok := g.stat[r.Filepath]
	if !ok {
		return nil, os.ErrNotExist
	}
	if e.endless {
		return endless{}, nil
	}
	return strings.NewReader(e.data), nil
}

func (g *fakeGuest) Filewrite(*sftp.Request) (io.WriterAt, error) { return nil, os.ErrPermission }
func (g *fakeGuest) Filecmd(*sftp.Request) error                  { return os.ErrPermission }

func (g *fakeGuest) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	switch r.Method {
	case "List":
		if r.Filepath == g.endlessDir {
			return endlessListing{}, nil
		}
		ents, ok := g.list[r.Filepath]
		if !ok {
			return nil, os.ErrNotExist
		}
		fis := make([]os.FileInfo, len(ents))
		for i, e := range ents {
			fis[i] = e
		}
		return lister(fis), nil
	case "Stat", "Lstat":
		e, ok := g.stat[r.Filepath]
		if !ok {
			return nil, os.ErrNotExist
		}
		return lister{e}, nil
	}
	return nil, os.ErrInvalid
}

func (g *fakeGuest) Readlink(p string) (string, error) {
	e, ok := g.stat[p]
	if !ok {
		return "", os.ErrNotExist
	}
	return e.target, nil
}

type lister []os.FileInfo

func (l lister) ListAt(out []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if n < len(out) {
		return n, io.EOF
	}
	return n, nil
}

type endless struct{}

func (endless) ReadAt(p []byte, _ int64) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// pipeConn is the server's end of two pipes; closing it ends both, so the
// client sees EOF too.
type pipeConn struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func (p pipeConn) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p pipeConn) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p pipeConn) Close() error {
	p.r.Close()
	return p.w.Close()
}

// dialFake connects an SFTP client to g over in-memory pipes.
func dialFake(t *testing.T, g *fakeGuest) *sftp.Client {
	t.Helper()
	return dialFakeLimited(t, g, nil)
}

// dialFakeLimited is dialFake with the client receiving through lim, as
// SFTPLimited's does.
func dialFakeLimited(t *testing.T, g *fakeGuest, lim *guest.RecvLimit) *sftp.Client {
	t.Helper()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	srv := sftp.NewRequestServer(pipeConn{sr, sw}, sftp.Handlers{FileGet: g, FilePut: g, FileCmd: g, FileList: g})
	go srv.Serve()
	var rd io.Reader = cr
	if lim != nil {
		rd = lim.Reader(cr)
	}
	c, err := sftp.NewClientPipe(rd, cw)
	if err != nil {
		t.Fatal(err)
	}
	// The client's end first: a server still writing a listing the
	// client stopped reading (an over-limit one) then fails instead of
	// blocking its Close.
	t.Cleanup(func() { cr.Close(); c.Close(); srv.Close() })
	return c
}

// tree builds a fakeGuest from "path" -> entry; each entry is also listed
// in its parent, under its name as given (which may disagree with path).
func tree(ents map[string]fakeEntry, order ...string) *fakeGuest {
	g := &fakeGuest{stat: map[string]fakeEntry{}, list: map[string][]fakeEntry{}}
	for _, p := range order {
		e := ents[p]
		g.stat[p] = e
		if e.mode.IsDir() {
			if _, ok := g.list[p]; !ok {
				g.list[p] = nil
			}
		}
		if p != "/t" {
			dir := path.Dir(p)
			g.list[dir] = append(g.list[dir], e)
		}
	}
	return g
}

func dirEntry(name string, mode fs.FileMode) fakeEntry {
	return fakeEntry{name: name, mode: fs.ModeDir | mode}
}

func fileEntry(name string, mode fs.FileMode, data string) fakeEntry {
	return fakeEntry{name: name, mode: mode, size: int64(len(data)), data: data}
}

func linkEntry(name, target string) fakeEntry {
	return fakeEntry{name: name, mode: fs.ModeSymlink | 0o777, target: target}
}

// canaries makes a directory and a file outside the copy's target that a
// hostile guest aims its links at.
func canaries(t *testing.T) (dir, file string) {
	t.Helper()
	base := t.TempDir()
	dir, file = filepath.Join(base, "canary-dir"), filepath.Join(base, "canary")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("canary\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, file
}

func checkCanaries(t *testing.T, dir, file string) {
	t.Helper()
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("canary directory: %v entries, err %v; want it empty", ents, err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "canary\n" {
		t.Errorf("canary file: %q, err %v; want it unchanged", b, err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode() != 0o644 {
		t.Errorf("canary file mode: %v, err %v; want 0644", fi.Mode(), err)
	}
}

// TestDownloadHostileListing feeds Download what no honest file system
// says; each case must fail (or skip) and write nothing outside the
// target.
func TestDownloadHostileListing(t *testing.T) {
	cdir, cfile := canaries(t)
	tests := []struct {
		name    string
		ents    map[string]fakeEntry
		order   []string
		wantErr error // nil: the copy succeeds
	}{
		{
			name: "dot-dot name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/x": fileEntry("x/..", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/x"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "slash name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/x": fileEntry("/", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/x"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "NUL name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/x": fileEntry("x\x00y", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/x"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "empty name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/x": fileEntry("", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/x"}, wantErr: guest.ErrUnsafe,
		},
		{
			// The client keeps only the last component of a name: the
			// entry lands at canary inside the target, harmlessly.
			name: "climbing name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/canary": fileEntry("../../../../../../"+cfile, 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/canary"},
		},
		{
			name: "absolute name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/canary": fileEntry(cfile, 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/canary"},
		},
		{
			name: "link to an outside directory, then a directory beneath it",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/esc": linkEntry("esc", cdir),
				"/t/esc2": dirEntry("esc", 0o755), "/t/esc2/pwned": fileEntry("pwned", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/esc", "/t/esc2", "/t/esc2/pwned"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "link to an outside file, then a file of the same name",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/pw": linkEntry("pw", cfile), "/t/pw2": fileEntry("pw", 0o644, "pwned\n"),
			},
			order: []string{"/t", "/t/pw", "/t/pw2"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "negative size",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/big": {name: "big", size: -1, endless: true},
			},
			order: []string{"/t", "/t/big"}, wantErr: guest.ErrUnsafe,
		},
		{
			name: "an exabyte",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/big": {name: "big", size: 1 << 60, endless: true},
			},
			order: []string{"/t", "/t/big"}, wantErr: errAny,
		},
		{
			name: "empty link target",
			ents: map[string]fakeEntry{
				"/t": dirEntry("t", 0o755), "/t/l": linkEntry("l", ""),
			},
			order: []string{"/t", "/t/l"}, wantErr: guest.ErrUnsafe,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialFake(t, tree(tt.ents, tt.order...))
			dst := t.TempDir()
			err := guest.Download(context.Background(), c, "/t", filepath.Join(dst, "copy"), nil)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Download: %v", err)
			case tt.wantErr == errAny && err == nil, tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("Download: %v, want %v", err, tt.wantErr)
			}
			t.Logf("Download: %v", err)
			checkCanaries(t, cdir, cfile)
			ents, _ := os.ReadDir(dst)
			if tt.wantErr != nil && len(ents) != 0 {
				t.Errorf("a failed download left %v behind", ents)
			}
			if tt.wantErr == nil {
				if b, err := os.ReadFile(filepath.Join(dst, "copy", "canary")); err != nil || string(b) != "pwned\n" {
					t.Errorf("copy/canary: %q, %v; want the entry inside the copy", b, err)
				}
			}
		})
	}
}

var errAny = errors.New("any error")

// TestDownloadTwice is the attack of a guest that plants links with one
// copy and writes through them with the next, into the same place.
func TestDownloadTwice(t *testing.T) {
	cdir, cfile := canaries(t)
	dst := t.TempDir()
	first := tree(map[string]fakeEntry{
		"/t": dirEntry("t", 0o755), "/t/esc": linkEntry("esc", cdir), "/t/pw": linkEntry("pw", cfile),
		"/t/up": linkEntry("up", ".."),
	}, "/t", "/t/esc", "/t/pw", "/t/up")
	if err := guest.Download(context.Background(), dialFake(t, first), "/t", dst, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"esc": cdir, "pw": cfile, "up": ".."} {
		if got, err := os.Readlink(filepath.Join(dst, "t", name)); err != nil || got != want {
			t.Errorf("first copy: %s links to %q (%v), want %q", name, got, err, want)
		}
	}
	second := tree(map[string]fakeEntry{
		"/t":     dirEntry("t", 0o755),
		"/t/esc": dirEntry("esc", 0o755), "/t/esc/pwned": fileEntry("pwned", 0o644, "pwned\n"),
		"/t/pw": fileEntry("pw", 0o644, "pwned\n"),
		"/t/up": dirEntry("up", 0o755), "/t/up/pwned": fileEntry("pwned", 0o644, "pwned\n"),
	}, "/t", "/t/esc", "/t/esc/pwned", "/t/pw", "/t/up", "/t/up/pwned")
	if err := guest.Download(context.Background(), dialFake(t, second), "/t", dst, nil); err != nil {
		t.Fatal(err)
	}
	checkCanaries(t, cdir, cfile)
	for _, name := range []string{"t/esc/pwned", "t/pw", "t/up/pwned"} {
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("second copy: %s: %v %v, want a regular file", name, fi, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "pwned")); err == nil {
		t.Error("second copy wrote through the link up -> ..")
	}
}

// TestDownloadModes checks what modes the host gets, and that entries
// which are no file, directory or symlink are skipped with a warning.
func TestDownloadModes(t *testing.T) {
	g := tree(map[string]fakeEntry{
		"/t":        dirEntry("t", 0o755),
		"/t/suid":   fileEntry("suid", fs.ModeSetuid|0o4755, "x"),
		"/t/sgid":   fileEntry("sgid", fs.ModeSetgid|0o2775, "x"),
		"/t/world":  fileEntry("world", 0o666, "x"),
		"/t/secret": fileEntry("secret", 0o600, "x"),
		"/t/none":   fileEntry("none", 0, "x"),
		"/t/ro":     dirEntry("ro", 0o500),
		"/t/ro/f":   fileEntry("f", 0o644, "in a read-only directory"),
		"/t/sticky": dirEntry("sticky", fs.ModeSticky|fs.ModeSetgid|0o777),
		"/t/fifo":   {name: "fifo", mode: fs.ModeNamedPipe | 0o644},
		"/t/dev":    {name: "dev", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666},
		"/t/blk":    {name: "blk", mode: fs.ModeDevice | 0o666},
		"/t/sock":   {name: "sock", mode: fs.ModeSocket | 0o666},
	}, "/t", "/t/suid", "/t/sgid", "/t/world", "/t/secret", "/t/none", "/t/ro", "/t/ro/f", "/t/sticky", "/t/fifo", "/t/dev", "/t/blk", "/t/sock")
	var logs bytes.Buffer
	dst := filepath.Join(t.TempDir(), "copy")
	if err := guest.Download(context.Background(), dialFake(t, g), "/t", dst, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{
		"suid": 0o755, "sgid": 0o755, "world": 0o644, "secret": 0o600, "none": 0,
		"ro": fs.ModeDir | 0o500, "ro/f": 0o644, "sticky": fs.ModeDir | 0o755,
	} {
		if fi, err := os.Lstat(filepath.Join(dst, name)); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, err %v; want %v", name, fi.Mode(), err, want)
		}
	}
	for _, name := range []string{"fifo", "dev", "blk", "sock"} {
		if _, err := os.Lstat(filepath.Join(dst, name)); err == nil {
			t.Errorf("%s was created", name)
		}
		if !strings.Contains(logs.String(), "/t/"+name) {
			t.Errorf("no warning for %s in %q", name, logs.String())
		}
	}
}

// TestDownloadSize checks that a file is copied up to the size the guest
// announced, however much it sends.
func TestDownloadSize(t *testing.T) {
	g := tree(map[string]fakeEntry{
		"/t": dirEntry("t", 0o755), "/t/f": {name: "f", size: 3 << 20, endless: true},
	}, "/t", "/t/f")
	g.stat["/f"] = fakeEntry{name: "f", size: 100, endless: true}
	dst := t.TempDir()
	ctx := context.Background()
	if err := guest.Download(ctx, dialFake(t, g), "/t", dst, nil); err != nil {
		t.Fatal(err)
	}
	if err := guest.Download(ctx, dialFake(t, g), "/f", dst, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int64{"t/f": 3 << 20, "f": 100} {
		if fi, err := os.Stat(filepath.Join(dst, name)); err != nil || fi.Size() != want {
			t.Errorf("%s: %v bytes, err %v; want %d", name, fi.Size(), err, want)
		}
	}
}

// TestDownloadDepth checks that an endless chain of directories stops.
func TestDownloadDepth(t *testing.T) {
	g := &fakeGuest{stat: map[string]fakeEntry{}, list: map[string][]fakeEntry{}}
	p := "/t"
	g.stat[p] = dirEntry("t", 0o755)
	for range 300 {
		g.list[p] = []fakeEntry{dirEntry("d", 0o755)}
		p += "/d"
	}
	g.list[p] = nil
	dst := t.TempDir()
	err := guest.Download(context.Background(), dialFake(t, g), "/t", filepath.Join(dst, "copy"), nil)
	if !errors.Is(err, guest.ErrUnsafe) {
		t.Fatalf("Download: %v, want ErrUnsafe", err)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("left %v behind", ents)
	}
}

// TestDownloadEndlessListing: a directory whose listing never ends costs
// the host bounded memory (guest.MaxListing received) and fails the copy,
// leaving nothing.
func TestDownloadEndlessListing(t *testing.T) {
	g := &fakeGuest{stat: map[string]fakeEntry{"/t": dirEntry("t", 0o755)}, list: map[string][]fakeEntry{
		"/t": {dirEntry("big", 0o755)}}, endlessDir: "/t/big"}
	g.stat["/t/big"] = dirEntry("big", 0o755)
	dst := t.TempDir()
	lim := new(guest.RecvLimit)
	done := make(chan error, 1)
	go func() {
		done <- guest.DownloadLimited(context.Background(), dialFakeLimited(t, g, lim), lim, "/t", filepath.Join(dst, "copy"), nil)
	}()
	select {
	case err := <-done:
		if !errors.Is(err, guest.ErrAnswerTooLarge) {
			t.Fatalf("Download: %v, want ErrAnswerTooLarge", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Download of an endless listing did not end")
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("left %v behind", ents)
	}
}

// TestDownloadDestination checks where copies land, as cp puts them.
func TestDownloadDestination(t *testing.T) {
	g := tree(map[string]fakeEntry{
		"/t": dirEntry("t", 0o755), "/t/a": fileEntry("a", 0o644, "a\n"),
	}, "/t", "/t/a")
	g.stat["/f.log"] = fileEntry("f.log", 0o644, "log\n")
	tests := []struct {
		name     string
		src, dst string // dst relative to a fresh temp dir holding "dir/" and "file"
		want     string // a file the copy made, relative to the temp dir
		wantErr  bool
	}{
		{name: "file into a directory", src: "/f.log", dst: "dir", want: "dir/f.log"},
		{name: "file into a directory/", src: "/f.log", dst: "dir/", want: "dir/f.log"},
		{name: "file into .", src: "/f.log", dst: ".", want: "f.log"},
		{name: "file to a new name", src: "/f.log", dst: "new.log", want: "new.log"},
		{name: "file over a file", src: "/f.log", dst: "file", want: "file"},
		{name: "file to a new parent", src: "/f.log", dst: "a/b/c.log", want: "a/b/c.log"},
		{name: "file into a missing directory/", src: "/f.log", dst: "missing/", wantErr: true},
		{name: "tree into a directory", src: "/t", dst: "dir", want: "dir/t/a"},
		{name: "tree into .", src: "/t", dst: ".", want: "t/a"},
		{name: "tree/ into a directory", src: "/t/", dst: "dir", want: "dir/t/a"},
		{name: "tree/. into a directory", src: "/t/.", dst: "dir", want: "dir/a"},
		{name: "tree to a new name", src: "/t", dst: "new", want: "new/a"},
		{name: "tree to a new name/", src: "/t", dst: "new/", want: "new/a"},
		{name: "tree onto a file", src: "/t", dst: "file", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			if err := os.Mkdir(filepath.Join(base, "dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(base, "file"), []byte("old\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Chdir(base)
			err := guest.Download(context.Background(), dialFake(t, g), tt.src, tt.dst, nil)
			var de *guest.DestinationError
			if tt.wantErr {
				if !errors.As(err, &de) {
					t.Fatalf("Download: %v, want a DestinationError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(base, tt.want)); err != nil {
				t.Errorf("want %s: %v", tt.want, err)
			}
		})
	}
}

// TestDownloadManyEntries: a guest tree of more entries than the limit
// (many small directories of empty files, each within every other bound)
// fails the copy and leaves nothing on the host.
func TestDownloadManyEntries(t *testing.T) {
	ents := map[string]fakeEntry{"/t": dirEntry("t", 0o755)}
	order := []string{"/t"}
	for i := range 40 {
		d := fmt.Sprintf("/t/d%d", i)
		ents[d] = dirEntry(path.Base(d), 0o755)
		order = append(order, d)
		for j := range 40 {
			f := fmt.Sprintf("%s/f%d", d, j)
			ents[f] = fileEntry(path.Base(f), 0o644, "")
			order = append(order, f)
		}
	}
	for _, tc := range []struct {
		limit int
		ok    bool
	}{{len(order) - 1, true}, {len(order) - 2, false}} {
		dst := t.TempDir()
		err := guest.DownloadWithEntries(context.Background(), dialFake(t, tree(ents, order...)), nil, "/t", filepath.Join(dst, "copy"), nil, tc.limit)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, guest.ErrUnsafe)) {
			t.Fatalf("limit %d: %v, want ok %v (else ErrUnsafe)", tc.limit, err, tc.ok)
		}
		if ents, _ := os.ReadDir(dst); !tc.ok && len(ents) != 0 {
			t.Errorf("limit %d: left %v behind", tc.limit, ents)
		}
	}
}
