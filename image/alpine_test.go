package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/shacrypt"
	"golang.org/x/crypto/bcrypt"
)

// TestAlpineFromMirror downloads the real release file from a local
// mirror, verifies it, unpacks it and checks the result in the ext4 image.
func TestAlpineFromMirror(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	mirror, hits := alpineMirror(t, file)
	b.AlpineSource = mirror
	img := mustBuild(t, b, "alp", BuildOptions{From: "alpine", Password: "pw one", SizeMiB: 96})
	if *hits != 1 {
		t.Errorf("mirror hits = %d, want 1", *hits)
	}
	if img.Source != "alpine:"+AlpineVersion || !img.Password || img.SizeMiB != 96 || img.BootArgs != SSHBootArgs {
		t.Errorf("image = %+v", img)
	}
	if !strings.HasPrefix(img.OS, "Alpine Linux") {
		t.Errorf("OS = %q", img.OS)
	}
	if img.Kernel == "" || img.KernelRelease == "" || img.KernelFormat != "bzImage" || img.Initrd == "" {
		t.Errorf("kernel not recorded: %+v", img)
	}
	if got := fsSizeMiB(t, img.Rootfs); got != 96 {
		t.Errorf("filesystem size = %d MiB, want 96", got)
	}
	fsck(t, img.Rootfs)
	if !strings.Contains(catFile(t, img.Rootfs, "/etc/os-release"), "ID=alpine") {
		t.Error("os-release is not Alpine's")
	}
	hash := strings.TrimSpace(catFile(t, img.Rootfs, RootPasswordFile))
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("pw one")) != nil {
		t.Errorf("%s = %q: not a bcrypt hash of the password", RootPasswordFile, hash)
	}
	var shadowHash string
	for _, l := range strings.Split(catFile(t, img.Rootfs, "/etc/shadow"), "\n") {
		if f := strings.Split(l, ":"); f[0] == "root" && len(f) > 1 {
			shadowHash = f[1]
		}
	}
	if again, _ := shacrypt.Crypt("pw one", shadowHash); !strings.HasPrefix(shadowHash, "$6$") || again != shadowHash {
		t.Errorf("shadow root hash = %q, not SHA-512 crypt of the password", shadowHash)
	}
	// Owners and modes as in the tarball: busybox setuid-less, /tmp sticky.
	if in, ok := statFile(t, img.Rootfs, "/tmp"); !ok || in.mode != "01777" {
		t.Errorf("/tmp = %+v", in)
	}
	if in, ok := statFile(t, img.Rootfs, "/bin/sh"); !ok || in.kind != "symlink" {
		t.Errorf("/bin/sh = %+v, want a symlink", in)
	}
	if _, err := os.Stat(filepath.Join(b.CacheDir, "downloads", AlpineFile)); err != nil {
		t.Errorf("download not cached: %v", err)
	}

	// The same password in another build: fresh salts, so other hashes,
	// and nothing derived from it in either manifest.
	other := mustBuild(t, b, "alp2", BuildOptions{From: "alpine", Password: "pw one", SizeMiB: 96})
	if hash2 := strings.TrimSpace(catFile(t, other.Rootfs, RootPasswordFile)); hash2 == hash || bcrypt.CompareHashAndPassword([]byte(hash2), []byte("pw one")) != nil {
		t.Errorf("bcrypt hashes of two builds: %q and %q, want different hashes of the password", hash, hash2)
	}
	if shadow2 := rootShadowHash(t, other.Rootfs); shadow2 == shadowHash || shadow2[:19] == shadowHash[:19] {
		t.Errorf("shadow hashes of two builds share a salt: %q and %q", shadowHash, shadow2)
	}
	otherPassword := mustBuild(t, b, "alp3", BuildOptions{From: "alpine", Password: "something else", SizeMiB: 96})
	if otherPassword.Fingerprint != other.Fingerprint {
		t.Error("the fingerprint in the manifest depends on which password was given")
	}
	for _, name := range []string{"alp", "alp2"} {
		manifest, _ := os.ReadFile(filepath.Join(b.CacheDir, "images", name, "image.json"))
		if strings.Contains(string(manifest), "$2") || strings.Contains(string(manifest), "$6$") {
			t.Errorf("manifest of %s holds a password hash:\n%s", name, manifest)
		}
	}
}

func rootShadowHash(t *testing.T, rootfs string) string {
	for _, l := range strings.Split(catFile(t, rootfs, "/etc/shadow"), "\n") {
		if f := strings.Split(l, ":"); f[0] == "root" && len(f) > 1 && len(f[1]) > 19 {
			return f[1]
		}
	}
	t.Fatal("no root hash in /etc/shadow")
	return ""
}

// TestCacheHitAndRebuild checks that equal inputs return the cached image
// at once and that each changed input rebuilds.
func TestCacheHitAndRebuild(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	b.AlpineSource = file
	b.Progress = nil
	opts := BuildOptions{From: "alpine", SizeMiB: 64}
	first := mustBuild(t, b, "c", opts)
	start := time.Now()
	again := mustBuild(t, b, "c", opts)
	hit := time.Since(start)
	t.Logf("cache hit took %v (build took %v)", hit, time.Duration(first.BuildTime))
	if again.Fingerprint != first.Fingerprint || !again.Created.Equal(first.Created) || again.Rootfs != first.Rootfs {
		t.Fatalf("second build rebuilt: %+v vs %+v", again, first)
	}
	if hit > 2*time.Second { // milliseconds when idle; room for a loaded CI machine
		t.Errorf("cache hit took %v", hit)
	}
	prev := first
	for _, change := range []struct {
		name string
		opts BuildOptions
	}{
		{"size", BuildOptions{From: "alpine", SizeMiB: 72}},
		{"password", BuildOptions{From: "alpine", SizeMiB: 72, Password: "x"}},
		{"other password", BuildOptions{From: "alpine", SizeMiB: 72, Password: "y"}},
		{"forced", BuildOptions{From: "alpine", SizeMiB: 72, Password: "y", Force: true}},
	} {
		img := mustBuild(t, b, "c", change.opts)
		if img.Created.Equal(prev.Created) {
			t.Errorf("%s changed but the image was not rebuilt", change.name)
		}
		// Which password it is leaves no trace in the manifest.
		if change.name != "forced" && change.name != "other password" && img.Fingerprint == prev.Fingerprint {
			t.Errorf("%s changed but the fingerprint did not", change.name)
		}
		prev = img
	}
	// The same password again is a cache hit, found through the image's
	// own (randomly salted) hash.
	if img := mustBuild(t, b, "c", change(prev)); !img.Created.Equal(prev.Created) {
		t.Error("the same password rebuilt the image")
	}
	// A new agent rebuilds too.
	agent2 := filepath.Join(t.TempDir(), "agent")
	data, _ := os.ReadFile(testAgent)
	os.WriteFile(agent2, append(data, 0), 0o755)
	b2 := *b
	b2.Agent = agent2
	if img := mustBuild(t, &b2, "c", change(prev)); img.Fingerprint == prev.Fingerprint {
		t.Error("agent changed but the fingerprint did not")
	}
	if fsSizeMiB(t, prev.Rootfs) != 72 {
		t.Error("size not applied")
	}
	list, err := b.List()
	if err != nil || len(list) != 1 || list[0].Name != "c" {
		t.Fatalf("List = %v, %v", list, err)
	}
	if err := b.Remove(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get("c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Remove: %v", err)
	}
	if err := b.Remove(context.Background(), "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
}

func change(img *Image) BuildOptions {
	return BuildOptions{From: "alpine", SizeMiB: img.SizeMiB, Password: "y"}
}

// TestDefaultSizeGrows checks that without a size the image is the
// default size, and that a given size below the minimum is refused with
// the minimum named, while the minimum itself works.
func TestSizes(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	b.AlpineSource = file
	img := mustBuild(t, b, "d", BuildOptions{From: "alpine"})
	if img.SizeMiB != DefaultSizeMiB || fsSizeMiB(t, img.Rootfs) != DefaultSizeMiB {
		t.Errorf("default size = %d", img.SizeMiB)
	}
	_, err := b.Build(context.Background(), "small", BuildOptions{From: "alpine", SizeMiB: 4})
	var se *SizeError
	if !errors.As(err, &se) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at least") {
		t.Fatalf("4 MiB: %v, want a SizeError", err)
	}
	t.Logf("error: %v", err)
	if _, err := b.Get("small"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a failed build left an image: %v", err)
	}
	min := mustBuild(t, b, "small", BuildOptions{From: "alpine", SizeMiB: se.MinMiB})
	fsck(t, min.Rootfs)
	if !strings.Contains(catFile(t, min.Rootfs, "/etc/os-release"), "ID=alpine") {
		t.Error("minimum-size image lacks files")
	}
}
