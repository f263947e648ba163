package image

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testAgent is a static binary standing in for the agent: builds need
// one to hash and to put in the initramfs, but these tests boot nothing.
var testAgent string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Getenv(helperEnv) != "" {
		return helperMain()
	}
	tmp, err := os.MkdirTemp("", "smolvm-image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "main.go")
	os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644)
	testAgent = filepath.Join(tmp, "agent")
	build := exec.Command("go", "build", "-o", testAgent, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building a stand-in agent: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// newBuilder returns a builder with its own cache directory.
func newBuilder(t *testing.T) *Builder {
	t.Helper()
	if _, err := (&Builder{}).FindKernel(); err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (apt-get install e2fsprogs)", tool)
		}
	}
	return &Builder{CacheDir: t.TempDir(), Agent: testAgent, StallTimeout: 5 * time.Second, Progress: testWriter{t}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// alpineFile returns the real Alpine release file, or skips.
func alpineFile(t *testing.T) string {
	t.Helper()
	src := os.Getenv(AlpineSourceEnv)
	if src == "" {
		t.Skipf("%s is unset: point it at the Alpine minirootfs %s (or the directory holding it)", AlpineSourceEnv, AlpineFile)
	}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		src = filepath.Join(src, AlpineFile)
	}
	if _, err := os.Stat(src); err != nil {
		t.Skipf("%s: %v", AlpineSourceEnv, err)
	}
	return src
}

// alpineMirror serves the Alpine release file as a mirror would, at
// /v3.20/releases/x86_64/FILE, and counts requests.
func alpineMirror(t *testing.T, file string) (url string, hits *int) {
	t.Helper()
	n := 0
	mux := http.NewServeMux()
	mux.HandleFunc("/v3.20/releases/x86_64/"+AlpineFile, func(w http.ResponseWriter, r *http.Request) {
		n++
		http.ServeFile(w, r, file)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// debugfs runs a debugfs request against an ext4 image.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %q: %v\n%s", req, err, out)
	}
	return string(out)
}

// catFile returns a file's contents from an ext4 image.
func catFile(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// inodeInfo is what debugfs stat says about a path.
type inodeInfo struct {
	inode, links, uid, gid int
	mode                   string // octal, with type bits
	kind                   string
}

func statFile(t *testing.T, img, path string) (inodeInfo, bool) {
	t.Helper()
	out := debugfs(t, img, "stat "+path)
	if strings.Contains(out, "File not found") {
		return inodeInfo{}, false
	}
	var in inodeInfo
	f := strings.Fields(strings.NewReplacer(":", " : ").Replace(out))
	for i := 0; i+2 < len(f); i++ {
		v := f[i+2]
		switch f[i] {
		case "Inode":
			in.inode, _ = strconv.Atoi(v)
		case "Type":
			in.kind = v
		case "Mode":
			in.mode = v
		case "User":
			in.uid, _ = strconv.Atoi(v)
		case "Group":
			in.gid, _ = strconv.Atoi(v)
		case "Links":
			in.links, _ = strconv.Atoi(v)
		}
	}
	return in, true
}

// fsSizeMiB reads the filesystem size from its superblock.
func fsSizeMiB(t *testing.T, img string) int {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", img).Output()
	if err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	}
	var blocks, bs int
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, _ = strconv.Atoi(strings.TrimSpace(v))
		case "Block size":
			bs, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return blocks * bs >> 20
}

// fsck checks an ext4 image read-only.
func fsck(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck %s: %v\n%s", img, err, out)
	}
}

func mustBuild(t *testing.T, b *Builder, name string, opts BuildOptions) *Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := b.Build(ctx, name, opts)
	if err != nil {
		t.Fatalf("build %s from %s: %v", name, opts.From, err)
	}
	return img
}

// blackHole accepts connections and never answers.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}
