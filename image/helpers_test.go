package image

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/imagetest"
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
	// State directories do not know each other's IP leases, and a VM
	// holds no TAP (which the pool skips) while created, stopped or
	// hibernated; so each test package that boots VMs leases from a
	// part of the pool of its own.
	if os.Getenv("SMOLVM_SUBNET") == "" {
		os.Setenv("SMOLVM_SUBNET", "172.29.128.0/19")
	}
	tmp, err := os.MkdirTemp("", "smolvm-image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if testAgent, err = imagetest.StandInAgent(tmp); err != nil {
		fmt.Fprintln(os.Stderr, err)
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

// The shared helpers, under the names these tests use.
func alpineFile(t *testing.T) string { return imagetest.AlpineFile(t, AlpineSourceEnv, AlpineFile) }

func debugfs(t *testing.T, img, req string) string { return imagetest.Debugfs(t, img, req) }

func catFile(t *testing.T, img, path string) string { return imagetest.CatFile(t, img, path) }

func fsck(t *testing.T, img string) { imagetest.Fsck(t, img) }

func blackHole(t *testing.T) string { return imagetest.BlackHole(t) }

type inodeInfo struct {
	inode, links, uid, gid int
	mode, kind             string
}

func statFile(t *testing.T, img, path string) (inodeInfo, bool) {
	t.Helper()
	in, ok := imagetest.StatFile(t, img, path)
	return inodeInfo{in.Inode, in.Links, in.UID, in.GID, in.Mode, in.Kind}, ok
}
