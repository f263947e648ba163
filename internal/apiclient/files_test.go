package apiclient

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/api"
)

// hostileServer answers every GET of files with the tar entries given: what
// a guest that controls its files (and races the server's walk) can make
// a server send. The real server builds its tar from the guest's file
// tree, which cannot be made to hold these entries on demand, so this one
// is a stand-in.
func hostileServer(t *testing.T, entries []tar.Header) *Client {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h.Format = tar.FormatPAX
		body := []byte(nil)
		if h.Typeflag == tar.TypeReg {
			body = []byte("data of " + h.Name)
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", api.Tar)
		w.Write(buf.Bytes())
	})}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	c, err := New("tcp://"+l.Addr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDownloadHostileTree: nothing a guest sends lands outside the
// destination, keeps setuid/setgid/sticky or group/other write, or is a
// device or FIFO; a refused tree leaves nothing behind.
func TestDownloadHostileTree(t *testing.T) {
	ctx := context.Background()
	t.Run("modes and special files", func(t *testing.T) {
		c := hostileServer(t, []tar.Header{
			{Name: "./", Typeflag: tar.TypeDir, Mode: 0o777},
			{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4777},
			{Name: "sticky/", Typeflag: tar.TypeDir, Mode: 0o1777},
			{Name: "sticky/gw", Typeflag: tar.TypeReg, Mode: 0o2666},
			{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644},
			{Name: "dev", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
			{Name: "abs", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
		})
		dst := filepath.Join(t.TempDir(), "out")
		if err := c.Download(ctx, "vm", "/root/tree", dst, nil); err != nil {
			t.Fatal(err)
		}
		want := map[string]fs.FileMode{
			".": fs.ModeDir | 0o755, "suid": 0o755, "sticky": fs.ModeDir | 0o755, "sticky/gw": 0o644,
			"abs": fs.ModeSymlink | 0o777,
		}
		got := map[string]fs.FileMode{}
		filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, _ := d.Info()
			rel, _ := filepath.Rel(dst, p)
			got[rel] = info.Mode()
			return nil
		})
		for name, m := range want {
			if got[name] != m {
				t.Errorf("%s: mode %v, want %v", name, got[name], m)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s: made, but should have been skipped", name)
			}
		}
		if l, _ := os.Readlink(filepath.Join(dst, "abs")); l != "/etc/passwd" {
			t.Errorf("symlink target %q, want it kept as it is", l)
		}
	})
	for _, tt := range []struct {
		name    string
		entries []tar.Header
		refused bool // else it may land, inside the destination only
	}{
		{"climbs out", []tar.Header{{Name: "../../escaped", Typeflag: tar.TypeReg, Mode: 0o644}}, true},
		// Symlinks resolve as if the destination were "/" (as for image
		// layers): the file lands beneath the destination.
		{"writes through its own symlink", []tar.Header{
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"},
			{Name: "link/planted", Typeflag: tar.TypeReg, Mode: 0o644},
		}, false},
		{"hard link to a host file", []tar.Header{{Name: "hl", Typeflag: tar.TypeLink, Linkname: "OUTSIDE/victim"}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			outside := t.TempDir()
			os.WriteFile(filepath.Join(outside, "victim"), []byte("host"), 0o644)
			for i := range tt.entries {
				tt.entries[i].Linkname = strings.ReplaceAll(tt.entries[i].Linkname, "OUTSIDE", outside)
			}
			c := hostileServer(t, tt.entries)
			parent := t.TempDir()
			err := c.Download(ctx, "vm", "/root/tree", filepath.Join(parent, "out"), nil)
			if tt.refused && err == nil {
				t.Error("Download took the tree")
			}
			if ents, _ := os.ReadDir(parent); err != nil && len(ents) != 0 {
				t.Errorf("a refused download left %v behind", ents)
			}
			ents, _ := os.ReadDir(outside)
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); len(ents) != 1 || string(b) != "host" {
				t.Errorf("the guest reached outside the destination: %v, victim %q", ents, b)
			}
		})
	}
}
