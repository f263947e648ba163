package untar

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	major            int64
}

func archive(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return &buf
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyBasics(t *testing.T) {
	dir := t.TempDir()
	root := os.Geteuid() == 0
	_, err := Apply(dir, archive(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "etc/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "etc/hosts", body: "127.0.0.1 localhost\n"},
		entry{name: "bin/tool", body: "x", mode: 0o4755},
		entry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "bin/alias", typ: tar.TypeSymlink, link: "tool"},
		entry{name: "bin/hard", typ: tar.TypeLink, link: "bin/tool"},
		entry{name: "home/u/f", body: "mine", mode: 0o600, uid: 1000, gid: 1001},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1},
		entry{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
		entry{name: "etc/hosts", body: "replaced\n"}, // later entries win
	), Options{Owners: root, Devices: root})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "etc/hosts")); got != "replaced\n" {
		t.Errorf("hosts = %q", got)
	}
	fi, _ := os.Stat(filepath.Join(dir, "bin/tool"))
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("tool mode = %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(dir, "tmp"))
	if fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode = %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(dir, "etc"))
	if fi.Mode().Perm() != 0o750 || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("etc mode %v mtime %v", fi.Mode(), fi.ModTime())
	}
	if l, _ := os.Readlink(filepath.Join(dir, "bin/alias")); l != "tool" {
		t.Errorf("symlink -> %q", l)
	}
	a, _ := os.Stat(filepath.Join(dir, "bin/tool"))
	b, _ := os.Stat(filepath.Join(dir, "bin/hard"))
	if !os.SameFile(a, b) {
		t.Error("hard link is a copy")
	}
	fi, _ = os.Lstat(filepath.Join(dir, "run/fifo"))
	if fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo = %v", fi.Mode())
	}
	if root {
		st, _ := os.Stat(filepath.Join(dir, "home/u/f"))
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 1000 || s.Gid != 1001 {
			t.Errorf("owner = %d:%d", s.Uid, s.Gid)
		}
		fi, _ = os.Lstat(filepath.Join(dir, "dev/null"))
		if fi.Mode()&os.ModeCharDevice == 0 {
			t.Errorf("dev/null = %v", fi.Mode())
		}
	}
}

func TestApplyNoDevicesWithoutRoot(t *testing.T) {
	dir := t.TempDir()
	st, err := Apply(dir, archive(t, entry{name: "dev/sda", typ: tar.TypeBlock, mode: 0o600, major: 8}), Options{})
	if err != nil || st.SkippedDevices != 1 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "dev/sda")); err == nil {
		t.Error("device node made with Devices off")
	}
}

// TestApplyStaysInside tries every way out of the directory.
func TestApplyStaysInside(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("safe"), 0o644)

	for _, tc := range []struct {
		name    string
		entries []entry
		unsafe  bool // must fail with ErrUnsafe; else must succeed inside
	}{
		{"dotdot", []entry{{name: "../victim", body: "pwned"}}, true},
		{"nested dotdot", []entry{{name: "a/../../victim", body: "pwned"}}, true},
		{"hard link out", []entry{{name: "h", typ: tar.TypeLink, link: "../victim"}}, true},
		{"absolute name", []entry{{name: "/victim", body: "inside"}}, false},
		{"absolute symlink parent", []entry{
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/victim", body: "inside"},
		}, false},
		{"relative symlink parent climbing", []entry{
			{name: "up", typ: tar.TypeSymlink, link: "../../../../../../.." + outside},
			{name: "up/victim", body: "inside"},
		}, false},
		{"symlink then file over it", []entry{
			{name: "x", typ: tar.TypeSymlink, link: victim},
			{name: "x", body: "inside"},
		}, false},
		{"hard link through symlink dir", []entry{
			{name: "d", typ: tar.TypeSymlink, link: outside},
			{name: "h", typ: tar.TypeLink, link: "d/victim"},
		}, false},
		{"symlink loop", []entry{
			{name: "l1", typ: tar.TypeSymlink, link: "l2"},
			{name: "l2", typ: tar.TypeSymlink, link: "l1"},
			{name: "l1/f", body: "x"},
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Apply(dir, archive(t, tc.entries...), Options{})
			if tc.unsafe && !errors.Is(err, ErrUnsafe) {
				t.Errorf("err = %v, want ErrUnsafe", err)
			}
			if !tc.unsafe && err != nil && tc.name != "hard link through symlink dir" {
				t.Errorf("err = %v", err)
			}
			if got := read(t, victim); got != "safe" {
				t.Fatalf("file outside changed: %q", got)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Fatalf("files appeared outside: %v", ents)
			}
		})
	}
}

// TestWhiteouts applies two layers the OCI way.
func TestWhiteouts(t *testing.T) {
	dir := t.TempDir()
	opt := Options{Whiteouts: true}
	if _, err := Apply(dir, archive(t,
		entry{name: "keep"}, entry{name: "gone"}, entry{name: "d/a"}, entry{name: "d/sub/b"}, entry{name: "tree/x/y"},
		entry{name: "var/run", typ: tar.TypeSymlink, link: "/run"}, entry{name: "run/", typ: tar.TypeDir, mode: 0o755},
	), opt); err != nil {
		t.Fatal(err)
	}
	st, err := Apply(dir, archive(t,
		entry{name: "d/new-before"},
		entry{name: ".wh.gone"},
		entry{name: "d/.wh..wh..opq"},
		entry{name: "d/new-after"},
		entry{name: ".wh.tree"},
		entry{name: "var/run/pid", body: "1"},
		entry{name: "fresh"}, entry{name: ".wh.fresh"}, // whiteouts hide lower layers only
	), opt)
	if err != nil {
		t.Fatal(err)
	}
	if st.Whiteouts != 4 {
		t.Errorf("whiteouts = %d", st.Whiteouts)
	}
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(dir, p)); return err == nil }
	for p, want := range map[string]bool{
		"keep": true, "gone": false, ".wh.gone": false, "d/a": false, "d/sub": false,
		"d/new-before": true, "d/new-after": true, "d/.wh..wh..opq": false, "tree": false,
		"run/pid": true, "fresh": true,
	} {
		if exists(p) != want {
			t.Errorf("%s exists = %v, want %v", p, !want, want)
		}
	}
	// Without Whiteouts, .wh. files are ordinary files.
	if _, err := Apply(dir, archive(t, entry{name: ".wh.keep"}), Options{}); err != nil || !exists("keep") || !exists(".wh.keep") {
		t.Errorf("plain tarball: %v", err)
	}
}

func TestDecompressAndCorrupt(t *testing.T) {
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(archive(t, entry{name: "f", body: "hello"}).Bytes())
	w.Close()
	r, err := Decompress(bytes.NewReader(gz.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := Apply(dir, r, Options{}); err != nil || read(t, filepath.Join(dir, "f")) != "hello" {
		t.Fatalf("gzip: %v", err)
	}
	cut := gz.Bytes()[:gz.Len()/2]
	r, err = Decompress(bytes.NewReader(cut))
	if err == nil {
		_, err = Apply(t.TempDir(), r, Options{})
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated gzip: %v, want ErrCorrupt", err)
	}
	if _, err := Apply(t.TempDir(), bytes.NewReader(bytes.Repeat([]byte{'x'}, 2048)), Options{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("garbage: %v, want ErrCorrupt", err)
	}
}
