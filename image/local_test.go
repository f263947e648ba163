package image

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/untar"
	"golang.org/x/crypto/ssh"
)

// TestDirSource builds from a prepared tree, which stays untouched, and
// rebuilds when a file in it changes.
func TestDirSource(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	tree := filepath.Join(t.TempDir(), "rootfs")
	os.Mkdir(tree, 0o755)
	f, _ := os.Open(file)
	r, _ := untar.Decompress(f)
	if _, err := untar.Apply(tree, r, unpackOptions(false)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.WriteFile(filepath.Join(tree, "etc/custom"), []byte("v1\n"), 0o600)
	// A tree that brings its own agent password is not trusted with it.
	os.MkdirAll(filepath.Join(tree, "etc/smolvm"), 0o700)
	os.WriteFile(filepath.Join(tree, "etc/smolvm/root_password"), []byte("$2a$10$planted\n"), 0o600)
	os.Link(filepath.Join(tree, "etc/custom"), filepath.Join(tree, "etc/custom-link"))

	pub := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host"
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub)); err != nil {
		t.Fatal(err)
	}
	img := mustBuild(t, b, "mine", BuildOptions{From: "dir:" + tree, SizeMiB: 64, AuthorizedKeys: []string{pub}})
	if img.Source != "dir:"+tree || img.Password {
		t.Errorf("image = %+v", img)
	}
	fsck(t, img.Rootfs)
	if got := catFile(t, img.Rootfs, "/etc/custom"); got != "v1\n" {
		t.Errorf("custom file = %q", got)
	}
	a, _ := statFile(t, img.Rootfs, "/etc/custom")
	l, _ := statFile(t, img.Rootfs, "/etc/custom-link")
	if a.inode != l.inode || a.mode != "0600" {
		t.Errorf("hard link lost: %+v %+v", a, l)
	}
	if got := catFile(t, img.Rootfs, AuthorizedKeysFile); strings.TrimSpace(got) != pub {
		t.Errorf("authorized_keys = %q", got)
	}
	if in, _ := statFile(t, img.Rootfs, AuthorizedKeysFile); in.mode != "0600" || in.uid != 0 {
		t.Errorf("%s: %+v", AuthorizedKeysFile, in)
	}
	if _, ok := statFile(t, img.Rootfs, RootPasswordFile); ok {
		t.Error("a password file the tree brought was kept")
	}
	if _, err := os.Stat(filepath.Join(tree, "etc/smolvm/root_password")); err != nil {
		t.Error("the source tree was changed")
	}
	if _, err := os.Stat(filepath.Join(tree, "etc/smolvm/env.json")); err == nil {
		t.Error("the source tree was changed")
	}
	// A change in the tree rebuilds.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(filepath.Join(tree, "etc/custom"), []byte("v2\n"), 0o600)
	img2 := mustBuild(t, b, "mine", BuildOptions{From: "dir:" + tree, SizeMiB: 64, AuthorizedKeys: []string{pub}})
	if img2.Fingerprint == img.Fingerprint || catFile(t, img2.Rootfs, "/etc/custom") != "v2\n" {
		t.Error("changed tree not rebuilt")
	}

	// The same release as a tarball.
	tarImg := mustBuild(t, b, "fromtar", BuildOptions{From: "tar:" + file, SizeMiB: 64})
	if !strings.Contains(catFile(t, tarImg.Rootfs, "/etc/os-release"), "ID=alpine") {
		t.Error("tar source lacks os-release")
	}
	ctx := context.Background()
	if _, err := b.Build(ctx, "x", BuildOptions{From: "dir:" + file}); !errors.Is(err, ErrInvalid) {
		t.Errorf("dir: on a file: %v", err)
	}
	if _, err := b.Build(ctx, "x", BuildOptions{From: "tar:" + tree}); !errors.Is(err, ErrInvalid) {
		t.Errorf("tar: on a directory: %v", err)
	}
}

// TestFirecrackerKernel extracts an ELF vmlinux for Firecracker and
// records it in the image.
func TestFirecrackerKernel(t *testing.T) {
	b := newBuilder(t)
	k, err := b.PrepareKernel(context.Background(), BackendFirecracker)
	if err != nil {
		t.Fatal(err)
	}
	e, err := elf.Open(k.Path)
	if err != nil {
		t.Fatalf("%s: %v", k.Path, err)
	}
	e.Close()
	if k.Format != "vmlinux" || k.Release == "" || !strings.HasPrefix(k.Path, b.CacheDir) {
		t.Errorf("kernel = %+v", k)
	}
	start := time.Now()
	again, err := b.PrepareKernel(context.Background(), BackendFirecracker)
	if err != nil || again.Path != k.Path || time.Since(start) > time.Second {
		t.Errorf("second call: %+v %v after %v", again, err, time.Since(start))
	}
	q, err := b.PrepareKernel(context.Background(), "")
	if err != nil || q.Format != "bzImage" || q.Release != k.Release {
		t.Errorf("qemu kernel = %+v, %v", q, err)
	}
	if _, err := b.PrepareKernel(context.Background(), "vbox"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown backend: %v", err)
	}
	if file := os.Getenv(AlpineSourceEnv); file != "" {
		b.AlpineSource = file
		img := mustBuild(t, b, "fc", BuildOptions{From: "alpine", SizeMiB: 64, Backend: BackendFirecracker})
		if img.Kernel != k.Path || img.KernelFormat != "vmlinux" {
			t.Errorf("image kernel = %s (%s)", img.Kernel, img.KernelFormat)
		}
		got, _ := b.Get("fc")
		if got.Kernel != k.Path || got.KernelRelease != k.Release {
			t.Errorf("manifest kernel = %s %s", got.Kernel, got.KernelRelease)
		}
	}
}

// TestDebianErrors checks the Debian source's failures, which need no
// archive (the e2e test builds a real one).
func TestDebianErrors(t *testing.T) {
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
	}
	if os.Geteuid() != 0 {
		t.Skip("Debian builds need root")
	}
	b := newBuilder(t)
	ctx := context.Background()
	if _, err := b.Build(ctx, "deb", BuildOptions{From: "debian", Packages: []string{"bad;name"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad package: %v", err)
	}
	if _, err := b.Build(ctx, "deb", BuildOptions{From: "debian", Mirror: "ftp://x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad mirror: %v", err)
	}
	b.StallTimeout = 3 * time.Second
	start := time.Now()
	_, err := b.Build(ctx, "deb", BuildOptions{From: "debian", Mirror: "http://127.0.0.1:1/debian"})
	took := time.Since(start)
	t.Logf("unreachable mirror: %v (after %v)", err, took.Round(time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "mmdebstrap") {
		t.Errorf("unreachable mirror: %v", err)
	}
	if took > time.Minute {
		t.Errorf("took %v", took)
	}
	if _, err := b.Get("deb"); !errors.Is(err, ErrNotFound) {
		t.Errorf("image left: %v", err)
	}
}
