package smolvm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/guest"
)

// liar is a hostile guest's SFTP server: it lists what it likes, claims
// sizes it does not hold and describes trees with no end.
type liar struct {
	list   map[string][]os.FileInfo // directory -> entries
	links  map[string]string
	bodies map[string]string
	// endless makes every directory hold one more directory, "d".
	endless bool
	// endlessList makes the listing of /d never end.
	endlessList bool
}

// endlessLister lists files f0, f1, ... and never says it is done.
type endlessLister struct{}

func (endlessLister) ListAt(dst []os.FileInfo, off int64) (int, error) {
	for i := range dst {
		dst[i] = fakeInfo{name: fmt.Sprintf("f%d", off+int64(i)), mode: 0o644}
	}
	return len(dst), nil
}

type fakeInfo struct {
	name string
	mode fs.FileMode
	size int64
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return f.size }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Unix(0, 0) }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

type listerAt []os.FileInfo

func (l listerAt) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if off+int64(n) == int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}

func (l *liar) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	switch r.Method {
	case "List":
		if l.endlessList {
			return endlessLister{}, nil
		}
		if l.endless {
			return listerAt{fakeInfo{name: "d", mode: fs.ModeDir | 0o755}}, nil
		}
		return listerAt(l.list[r.Filepath]), nil
	case "Readlink":
		return listerAt{fakeInfo{name: l.links[r.Filepath]}}, nil
	}
	return listerAt{fakeInfo{name: path.Base(r.Filepath), mode: fs.ModeDir | 0o755}}, nil
}

func (l *liar) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return strings.NewReader(l.bodies[r.Filepath]), nil
}

// readTreeFrom runs ReadTree's walk against srv over an in-memory pipe.
func readTreeFrom(t *testing.T, srv *liar) ([]byte, error) {
	t.Helper()
	return readTreeLimited(t, srv, MaxTreeListing)
}

// readTreeLimited is readTreeFrom with listings bounded to listing bytes,
// received through a guest.RecvLimit as ReadTree's are.
func readTreeLimited(t *testing.T, srv *liar, listing int64) ([]byte, error) {
	t.Helper()
	a, b := net.Pipe()
	rs := sftp.NewRequestServer(a, sftp.Handlers{FileGet: srv, FilePut: nil, FileCmd: nil, FileList: srv})
	go rs.Serve()
	t.Cleanup(func() { rs.Close() })
	lim := new(guest.RecvLimit)
	c, err := sftp.NewClientPipe(lim.Reader(b), b)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	w := &treeWalk{ctx: context.Background(), c: c, tw: tw, lim: lim, listLeft: listing, mask: 0o022}
	if err := w.dir("/d", "", 0); err != nil {
		return buf.Bytes(), err
	}
	return buf.Bytes(), tw.Close()
}

func TestReadTreeHostileGuest(t *testing.T) {
	reg := func(name string, size int64) os.FileInfo { return fakeInfo{name: name, mode: 0o644, size: size} }
	tests := []struct {
		name string
		srv  *liar
		want string // in the error
	}{
		// pkg/sftp's client already keeps only the base name of what a
		// server lists and skips "." and ".."; these must fail or stay
		// inside either way.
		{"dotdot name", &liar{list: map[string][]os.FileInfo{"/d": {reg("..", 1)}}}, ""},
		{"name with slash", &liar{list: map[string][]os.FileInfo{"/d": {reg("../../etc/passwd", 1)}}, bodies: map[string]string{"/d/passwd": "x"}}, ""},
		{"absolute name", &liar{list: map[string][]os.FileInfo{"/d": {reg("/etc/passwd", 1)}}, bodies: map[string]string{"/d/passwd": "x"}}, ""},
		{"dot name", &liar{list: map[string][]os.FileInfo{"/d": {reg(".", 1)}}}, ""},
		{"empty name", &liar{list: map[string][]os.FileInfo{"/d": {reg("", 1)}}}, "named"},
		{"NUL in name", &liar{list: map[string][]os.FileInfo{"/d": {reg("a\x00b", 1)}}}, "named"},
		{"short file", &liar{list: map[string][]os.FileInfo{"/d": {reg("f", 100)}}, bodies: map[string]string{"/d/f": "only ten b"}}, "ended after 10 of the 100"},
		{"negative size", &liar{list: map[string][]os.FileInfo{"/d": {reg("f", -1)}}}, "negative size"},
		{"endless tree", &liar{endless: true}, "deeper than"},
		{"empty link target", &liar{list: map[string][]os.FileInfo{"/d": {fakeInfo{name: "l", mode: fs.ModeSymlink | 0o777}}}, links: map[string]string{"/d/l": ""}}, "target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := readTreeFrom(t, tt.srv)
			if tt.want == "" {
				tr := tar.NewReader(bytes.NewReader(b))
				for {
					h, err := tr.Next()
					if err != nil {
						break
					}
					if !filepath.IsLocal(h.Name) || strings.Contains(h.Name, "..") {
						t.Errorf("tar entry %q leaves the tree", h.Name)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one saying %q", err, tt.want)
			}
		})
	}

	// What an honest listing gives, and what is dropped on the way: a
	// file longer than it said is cut at its size, setuid and group/other
	// write go, devices are left out.
	srv := &liar{
		list: map[string][]os.FileInfo{"/d": {
			fakeInfo{name: "grows", mode: 0o4777, size: 3},
			fakeInfo{name: "dev", mode: fs.ModeDevice | 0o600},
			fakeInfo{name: "up", mode: fs.ModeSymlink | 0o777},
		}},
		bodies: map[string]string{"/d/grows": "abcdef"},
		links:  map[string]string{"/d/up": "../../../etc"},
	}
	b, err := readTreeFrom(t, srv)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	got := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if h.Name == "grows" && string(body) != "abc" {
			t.Errorf("grows: %q, want the 3 bytes it claimed", body)
		}
		got[h.Name] = h
	}
	if h := got["grows"]; h == nil || h.Mode != 0o755 {
		t.Errorf("grows: %+v, want mode 0755", h)
	}
	if h := got["up"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../../../etc" {
		t.Errorf("up: %+v", h)
	}
	if _, ok := got["dev"]; ok || len(got) != 2 {
		t.Errorf("entries %v", got)
	}
}

func TestTreeName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"a", "a", true}, {"./a/b/", "a/b", true}, {"./", ".", true}, {"a/./b", "a/b", true},
		{"..", "", false}, {"a/../../b", "", false}, {"/etc", "", false}, {"", "", false}, {"a\x00", "", false}, {"a/..", "", false},
	} {
		got, err := treeName(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("treeName(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestReadTreeHostileListings: a guest's listings cost the host bounded
// memory (MaxTreeListing, counted as received, held by a directory and
// its ancestors only), and a name listed twice fails the copy instead of
// making a tar that writes through a symlink when a client unpacks it.
func TestReadTreeHostileListings(t *testing.T) {
	files := func(n int) []os.FileInfo {
		var out []os.FileInfo
		for i := range n {
			out = append(out, fakeInfo{name: fmt.Sprintf("file-with-an-ordinary-name-%05d", i), mode: 0o644})
		}
		return out
	}
	dir := func(name string) os.FileInfo { return fakeInfo{name: name, mode: fs.ModeDir | 0o755} }

	t.Run("endless listing", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { _, err := readTreeFrom(t, &liar{endlessList: true}); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, guest.ErrAnswerTooLarge) {
				t.Errorf("error %v, want ErrAnswerTooLarge", err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("ReadTree of an endless listing did not end")
		}
	})

	// Deep: every level holds a listing while the next is read.
	deep := &liar{list: map[string][]os.FileInfo{}}
	p := "/d"
	for range 10 {
		deep.list[p] = append([]os.FileInfo{dir("d")}, files(500)...)
		p += "/d"
	}
	if _, err := readTreeLimited(t, deep, 200<<10); !errors.Is(err, guest.ErrAnswerTooLarge) {
		t.Errorf("nested listings over the limit: %v, want ErrAnswerTooLarge", err)
	}

	// Siblings: each listing is let go when its directory is done, so
	// their sum may exceed the limit.
	wide := &liar{list: map[string][]os.FileInfo{"/d": {dir("a"), dir("b"), dir("c")},
		"/d/a": files(1000), "/d/b": files(1000), "/d/c": files(1000)}}
	b, err := readTreeLimited(t, wide, 150<<10)
	if err != nil {
		t.Fatalf("sibling listings each under the limit: %v", err)
	}
	n := 0
	for tr := tar.NewReader(bytes.NewReader(b)); ; n++ {
		if _, err := tr.Next(); err != nil {
			break
		}
	}
	if n != 3003 {
		t.Errorf("%d entries, want 3003", n)
	}

	twice := &liar{
		list: map[string][]os.FileInfo{
			"/d":   {fakeInfo{name: "a", mode: fs.ModeSymlink | 0o777}, dir("a")},
			"/d/a": {fakeInfo{name: "passwd", mode: 0o644, size: 1}},
		},
		links:  map[string]string{"/d/a": "/etc"},
		bodies: map[string]string{"/d/a/passwd": "x"},
	}
	if _, err := readTreeFrom(t, twice); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a name listed twice: %v, want an error saying so", err)
	}

	// Directories lose group/other write too.
	open := &liar{list: map[string][]os.FileInfo{"/d": {fakeInfo{name: "pub", mode: fs.ModeDir | 0o1777}}}}
	b, err = readTreeFrom(t, open)
	if err != nil {
		t.Fatal(err)
	}
	h, err := tar.NewReader(bytes.NewReader(b)).Next()
	if err != nil || h.Name != "pub/" || h.Mode != 0o755 {
		t.Errorf("pub: %+v, %v; want mode 0755", h, err)
	}
}
