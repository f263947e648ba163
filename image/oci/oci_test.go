package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/imagetest"
)

// tarLayer makes an uncompressed layer from headers (and bodies for
// regular files).
func tarLayer(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

func dir(name string) tarEntry { return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir}} }
func file(name, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg}, body: body}
}

// testOCIImage assembles an image on the real Alpine minirootfs with
// layers that exercise whiteouts, opaque directories, hard links,
// symlinks, special modes and owners.
func testOCIImage(t *testing.T) v1.Image {
	t.Helper()
	base, err := tarball.LayerFromFile(imagetest.AlpineFile(t, image.AlpineSourceEnv, image.AlpineFile))
	if err != nil {
		t.Fatal(err)
	}
	l2 := tarLayer(t,
		dir("data/"), file("data/old1", "old"), file("data/old2", "old"), dir("data/sub/"), file("data/sub/old3", "old"),
		file("links/hl1", "linked content\n"),
		tarEntry{hdr: tar.Header{Name: "links/hl2", Typeflag: tar.TypeLink, Linkname: "links/hl1"}},
		tarEntry{hdr: tar.Header{Name: "links/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/os-release"}},
		tarEntry{hdr: tar.Header{Name: "usr/local/bin/suid", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "#!/bin/sh\necho suid\n"},
		dir("home/app/"),
		tarEntry{hdr: tar.Header{Name: "home/app/owned", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1234, Gid: 2345}, body: "mine\n"},
		file("etc/removed-later", "x"),
	)
	l3 := tarLayer(t,
		file("etc/.wh.motd", ""),                                               // whiteout of a base file
		file("etc/.wh.removed-later", ""),                                      // of a layer-2 file
		file(".wh.media", ""),                                                  // of a whole base directory
		dir("data/"), file("data/.wh..wh..opq", ""), file("data/new", "new\n"), // opaque
		file("var/run/smol.pid", "42\n"), // through the absolute var/run -> /run
		tarEntry{hdr: tar.Header{Name: "data/hl3", Typeflag: tar.TypeReg, Mode: 0o600}, body: "three\n"},
		tarEntry{hdr: tar.Header{Name: "data/hl4", Typeflag: tar.TypeLink, Linkname: "data/hl3"}},
	)
	img, err := mutate.AppendLayers(empty.Image, base, l2, l3)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "SMOL_FROM_IMAGE=yes"}
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// checkOCIRootfs checks the layers were applied as an OCI runtime would.
func checkOCIRootfs(t *testing.T, rootfs string) {
	t.Helper()
	imagetest.Fsck(t, rootfs)
	if !strings.Contains(imagetest.CatFile(t, rootfs, "/etc/os-release"), "ID=alpine") {
		t.Error("base layer missing")
	}
	for _, gone := range []string{"/etc/motd", "/etc/removed-later", "/media", "/data/old1", "/data/old2", "/data/sub", "/etc/.wh.motd", "/data/.wh..wh..opq"} {
		if _, ok := imagetest.StatFile(t, rootfs, gone); ok {
			t.Errorf("%s should have been whited out", gone)
		}
	}
	for _, p := range []string{"/data/new", "/etc/passwd"} {
		if _, ok := imagetest.StatFile(t, rootfs, p); !ok {
			t.Errorf("%s missing", p)
		}
	}
	h1, ok1 := imagetest.StatFile(t, rootfs, "/links/hl1")
	h2, ok2 := imagetest.StatFile(t, rootfs, "/links/hl2")
	if !ok1 || !ok2 || h1.Inode != h2.Inode || h1.Links != 2 {
		t.Errorf("hard link across entries: hl1 %+v, hl2 %+v", h1, h2)
	}
	if got := imagetest.CatFile(t, rootfs, "/links/hl2"); got != "linked content\n" {
		t.Errorf("hl2 = %q", got)
	}
	// Opaque hides only lower layers' entries: hl3/hl4 of its own layer stay.
	h3, ok3 := imagetest.StatFile(t, rootfs, "/data/hl3")
	h4, ok4 := imagetest.StatFile(t, rootfs, "/data/hl4")
	if !ok3 || !ok4 || h3.Inode != h4.Inode || h3.Links != 2 || h3.Mode != "0600" {
		t.Errorf("hard link: hl3 %+v, hl4 %+v", h3, h4)
	}
	if in, ok := imagetest.StatFile(t, rootfs, "/links/link"); !ok || in.Kind != "symlink" {
		t.Errorf("symlink: %+v", in)
	}
	if in, ok := imagetest.StatFile(t, rootfs, "/usr/local/bin/suid"); !ok || in.Mode != "04755" {
		t.Errorf("setuid file: %+v", in)
	}
	if in, ok := imagetest.StatFile(t, rootfs, "/home/app/owned"); !ok || in.UID != 1234 || in.GID != 2345 || in.Mode != "0640" {
		t.Errorf("owned file: %+v", in)
	}
	if got := imagetest.CatFile(t, rootfs, "/run/smol.pid"); got != "42\n" {
		t.Errorf("/run/smol.pid (written through var/run -> /run) = %q", got)
	}
	if in, ok := imagetest.StatFile(t, rootfs, "/var/run"); !ok || in.Kind != "symlink" {
		t.Errorf("/var/run is no longer a symlink: %+v", in)
	}
	if env := imagetest.CatFile(t, rootfs, image.EnvFile); !strings.Contains(env, `"SMOL_FROM_IMAGE":"yes"`) {
		t.Errorf("env file = %q", env)
	}
}

// TestOCIFromRegistry pulls from an in-process registry.
func TestOCIFromRegistry(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to apply file owners")
	}
	img := testOCIImage(t)
	b := newBuilder(t)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	ref := strings.TrimPrefix(reg.URL, "http://") + "/smol/test:v1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	built := mustBuild(t, b, "oci", image.BuildOptions{From: "oci:" + ref, SizeMiB: 64})
	digest, _ := img.Digest()
	if built.Source != "oci:"+ref+"@"+digest.String() {
		t.Errorf("source = %q", built.Source)
	}
	if len(built.Cmd) != 1 || !strings.Contains(strings.Join(built.Env, " "), "SMOL_FROM_IMAGE=yes") {
		t.Errorf("config not recorded: %+v", built)
	}
	checkOCIRootfs(t, built.Rootfs)

	// Same digest: cache hit. A new tag target: rebuild.
	again := mustBuild(t, b, "oci", image.BuildOptions{From: "oci:" + ref, SizeMiB: 64})
	if !again.Created.Equal(built.Created) {
		t.Error("same digest rebuilt")
	}
	img2, _ := mutate.AppendLayers(img, tarLayer(t, file("etc/v2", "2")))
	if err := remote.Write(r, img2); err != nil {
		t.Fatal(err)
	}
	moved := mustBuild(t, b, "oci", image.BuildOptions{From: "oci:" + ref, SizeMiB: 64})
	if moved.Created.Equal(built.Created) {
		t.Error("tag moved to a new image but nothing was rebuilt")
	}
	if imagetest.CatFile(t, moved.Rootfs, "/etc/v2") != "2" {
		t.Error("new layer missing after rebuild")
	}

	// Offline: the registry is gone, the cached image still serves when
	// nothing else changed; with a change, the error comes through.
	offline := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	offRef := strings.TrimPrefix(offline.URL, "http://") + "/smol/off:v1"
	ro, _ := name.ParseReference(offRef)
	if err := remote.Write(ro, img); err != nil {
		t.Fatal(err)
	}
	first := mustBuild(t, b, "off", image.BuildOptions{From: "oci:" + offRef, SizeMiB: 64})
	offline.Close()
	if again := mustBuild(t, b, "off", image.BuildOptions{From: "oci:" + offRef, SizeMiB: 64}); !again.Created.Equal(first.Created) {
		t.Error("offline rebuild of an unchanged image did not use the cache")
	}
	if _, err := b.Build(context.Background(), "off", image.BuildOptions{From: "oci:" + offRef, SizeMiB: 72}); err == nil {
		t.Error("offline build with a changed size succeeded")
	}

	// Errors: unknown tag, unreachable registry (bounded).
	ctx := context.Background()
	if _, err := b.Build(ctx, "oci2", image.BuildOptions{From: "oci:" + strings.TrimPrefix(reg.URL, "http://") + "/smol/test:nope"}); err == nil {
		t.Error("unknown tag built")
	}
	b.StallTimeout = 2 * time.Second
	start := time.Now()
	_, err = b.Build(ctx, "oci2", image.BuildOptions{From: "oci:" + strings.TrimPrefix(imagetest.BlackHole(t), "http://") + "/x/y:z"})
	if err == nil || time.Since(start) > 20*time.Second {
		t.Errorf("unreachable registry: %v after %v", err, time.Since(start))
	}
	t.Logf("unreachable registry: %v after %v", err, time.Since(start).Round(time.Millisecond))
}

// TestOCIFromLayoutAndTarball reads the same image from an OCI layout
// directory and from a `docker save` tarball.
func TestOCIFromLayoutAndTarball(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to apply file owners")
	}
	img := testOCIImage(t)
	b := newBuilder(t)
	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithPlatform(platform())); err != nil {
		t.Fatal(err)
	}
	fromLayout := mustBuild(t, b, "layout", image.BuildOptions{From: "oci:" + filepath.Join(dir, "layout"), SizeMiB: 64})
	checkOCIRootfs(t, fromLayout.Rootfs)

	tag, _ := name.NewTag("smol/saved:v1")
	saved := filepath.Join(dir, "saved.tar")
	if err := tarball.WriteToFile(saved, tag, img); err != nil {
		t.Fatal(err)
	}
	fromTar := mustBuild(t, b, "saved", image.BuildOptions{From: "oci:" + saved, SizeMiB: 64})
	checkOCIRootfs(t, fromTar.Rootfs)
	if _, err := b.Build(context.Background(), "saved2", image.BuildOptions{From: "oci:" + saved + ":smol/other:v9"}); err == nil {
		t.Error("a tag not in the tarball built")
	}
	if _, err := b.Build(context.Background(), "nope", image.BuildOptions{From: "oci:" + filepath.Join(dir, "missing")}); !errors.Is(err, image.ErrInvalid) && err == nil {
		t.Errorf("missing path: %v", err)
	}
}

// testAgent is a static binary standing in for the agent: builds need
// one to hash and to put in the initramfs, but these tests boot nothing.
var testAgent string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "smolvm-oci-test-")
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

// newBuilder returns a builder with its own cache directory that pulls
// OCI images with Puller.
func newBuilder(t *testing.T) *image.Builder {
	t.Helper()
	if _, err := (&image.Builder{}).FindKernel(); err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	imagetest.RequireTools(t)
	return &image.Builder{CacheDir: t.TempDir(), Agent: testAgent, StallTimeout: 5 * time.Second, Progress: testWriter{t}, OCI: Puller{}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func mustBuild(t *testing.T, b *image.Builder, name string, opts image.BuildOptions) *image.Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := b.Build(ctx, name, opts)
	if err != nil {
		t.Fatalf("build %s from %s: %v", name, opts.From, err)
	}
	return img
}

// TestNoPuller: without Builder.OCI, an "oci:" source is refused up
// front, saying how to wire one in, and nothing is built.
func TestNoPuller(t *testing.T) {
	b := newBuilder(t)
	b.OCI = nil
	_, err := b.Build(context.Background(), "x", image.BuildOptions{From: "oci:docker.io/library/alpine:3.20"})
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "oci.Puller") {
		t.Fatalf("build without a puller: %v; want errors.ErrUnsupported naming oci.Puller", err)
	}
	if _, err := b.Get("x"); !errors.Is(err, image.ErrNotFound) {
		t.Errorf("refused build left an image: %v", err)
	}
}
