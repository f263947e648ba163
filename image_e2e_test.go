package smolvm_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/image/oci"
)

// The image end-to-end tests build an image from each source, boot it,
// and check it from inside: the distribution's own tools, the root
// filesystem size, and root's password and key logins through the agent.

const e2ePassword = "correct horse battery"

// alpineRelease is the real Alpine file the tests serve, or a skip.
func alpineRelease(t *testing.T) string {
	t.Helper()
	requireVM(t)
	src := os.Getenv(image.AlpineSourceEnv)
	if src == "" {
		t.Skip(image.AlpineSourceEnv + " is unset: point it at the Alpine minirootfs (or its directory)")
	}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		src = filepath.Join(src, image.AlpineFile)
	}
	if _, err := os.Stat(src); err != nil {
		t.Skipf("%s: %v", image.AlpineSourceEnv, err)
	}
	return src
}

// imageBuilder builds into the tests' state directory, where VMs look
// images up by name.
func imageBuilder(t *testing.T) *image.Builder {
	return &image.Builder{CacheDir: testEnv.home, Agent: os.Getenv("SMOLVM_AGENT"), Progress: testLog{t}, OCI: oci.Puller{}}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// userKey is a key pair the tests put into images as an extra login key.
func userKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

// checkImageVM boots img by name and checks it from inside.
func checkImageVM(t *testing.T, ctx context.Context, img *image.Image, osID, toolCmd, toolWant string, key ssh.Signer) *smolvm.VM {
	t.Helper()
	vm := newVM(t, ctx, smolvm.VMConfig{Image: img.Name, DiskMiB: img.SizeMiB})
	startVM(t, ctx, vm)
	if res := run(t, ctx, vm, "cat /etc/os-release"); !strings.Contains(res.Stdout, "ID="+osID) {
		t.Errorf("os-release = %q, want ID=%s", res.Stdout, osID)
	}
	if res := run(t, ctx, vm, toolCmd); !res.OK() || !strings.Contains(res.Stdout, toolWant) {
		t.Errorf("%s: exit %d, stdout %.300q, stderr %q; want %q in it", toolCmd, res.ExitCode, res.Stdout, res.Stderr, toolWant)
	}
	// df counts the filesystem less its metadata (journal, inode tables).
	total, _ := strconv.Atoi(strings.TrimSpace(run(t, ctx, vm, "df -m / | awk 'NR==2 {print $2}'").Stdout))
	if total < img.SizeMiB*90/100 || total > img.SizeMiB {
		t.Errorf("df -m / total = %d MiB, want about %d", total, img.SizeMiB)
	}
	checkLogins(t, ctx, vm, img.Password, key)
	return vm
}

// checkLogins logs in over the VM's network as a user would: with the
// password (when the image has one), with an extra key (when given), and
// with the VM's own key, which vm.Run already used.
func checkLogins(t *testing.T, ctx context.Context, vm *smolvm.VM, password bool, key ssh.Signer) {
	t.Helper()
	info := vm.Info()
	hostPub, err := os.ReadFile(filepath.Join(vm.DataDir(), "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(hostPub)
	if err != nil {
		t.Fatal(err)
	}
	login := func(user string, auth ssh.AuthMethod) (string, error) {
		c, err := ssh.Dial("tcp", info.Network.SSHAddr, &ssh.ClientConfig{
			User: user, Auth: []ssh.AuthMethod{auth}, HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 30 * time.Second,
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		s, err := c.NewSession()
		if err != nil {
			return "", err
		}
		defer s.Close()
		out, err := s.Output("id -u")
		return strings.TrimSpace(string(out)), err
	}
	if out, err := login("root", ssh.Password(e2ePassword)); password && (err != nil || out != "0") {
		t.Errorf("password login: %q, %v", out, err)
	} else if !password && err == nil {
		t.Error("password login worked on an image without a password")
	}
	if _, err := login("root", ssh.Password("wrong")); err == nil {
		t.Error("wrong password accepted")
	}
	if key != nil {
		if out, err := login("root", ssh.PublicKeys(key)); err != nil || out != "0" {
			t.Errorf("extra key login: %q, %v", out, err)
		}
	}
	stranger, _ := userKey(t)
	if _, err := login("root", ssh.PublicKeys(stranger)); err == nil {
		t.Error("an unknown key logged in")
	}
	if password {
		// The console password is set too (SHA-512 crypt in /etc/shadow).
		if res := run(t, ctx, vm, "grep '^root:' /etc/shadow | cut -d: -f2 | cut -c1-3"); strings.TrimSpace(res.Stdout) != "$6$" {
			t.Errorf("shadow hash prefix = %q, want $6$", res.Stdout)
		}
	}
}

// TestImageAlpine builds the reference's build_alpine_ssh equivalent from
// a local mirror serving the real release file, then boots it.
func TestImageAlpine(t *testing.T) {
	file := alpineRelease(t)
	ctx := testContext(t, 4*time.Minute)
	mux := http.NewServeMux()
	mux.HandleFunc("/v3.20/releases/x86_64/"+image.AlpineFile, func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, file)
	})
	mirror := httptest.NewServer(mux)
	defer mirror.Close()

	b := imageBuilder(t)
	key, pub := userKey(t)
	opts := image.BuildOptions{From: "alpine", Mirror: mirror.URL, Password: e2ePassword, SizeMiB: 200, AuthorizedKeys: []string{pub}}
	img, err := b.Build(ctx, "e2e-alpine", opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	again, err := b.Build(ctx, "e2e-alpine", opts)
	if err != nil || !again.Created.Equal(img.Created) {
		t.Fatalf("second build: %v, created %v vs %v", err, again.Created, img.Created)
	}
	t.Logf("build %v, cache hit %v, %d MiB (%d MiB on disk)", time.Duration(img.BuildTime), time.Since(start), img.SizeMiB, img.DiskBytes>>20)
	checkImageVM(t, ctx, img, "alpine", "apk info", "busybox", key)
}

// TestImageDebian builds a minimal Debian with an extra package from
// Debian's archive (one build per test run) and boots it.
func TestImageDebian(t *testing.T) {
	requireVM(t)
	if lookPath("mmdebstrap") == "" {
		t.Skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
	}
	if os.Geteuid() != 0 {
		t.Skip("Debian image builds need root")
	}
	ctx := testContext(t, 8*time.Minute)
	b := imageBuilder(t)
	img, err := b.Build(ctx, "e2e-debian", image.BuildOptions{From: "debian", Packages: []string{"procps"}, Password: e2ePassword, SizeMiB: 400})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build %v, %d MiB (%d MiB on disk), %s", time.Duration(img.BuildTime), img.SizeMiB, img.DiskBytes>>20, img.OS)
	vm := checkImageVM(t, ctx, img, "debian", "dpkg -l", "ii  procps", nil)
	if res := run(t, ctx, vm, "ps -o comm= -p 1"); !res.OK() {
		t.Errorf("procps' ps: %+v", res)
	}
}

// TestImageOCI pulls an image the test assembles (the Alpine release as
// the base layer, then layers with whiteouts, hard links and owners) from
// an in-process registry, and boots it.
func TestImageOCI(t *testing.T) {
	file := alpineRelease(t)
	ctx := testContext(t, 4*time.Minute)
	base, err := tarball.LayerFromFile(file)
	if err != nil {
		t.Fatal(err)
	}
	oci, err := mutate.AppendLayers(empty.Image, base,
		layer(t, "data/old", "", "links/a", "linked\n", "home/app/owned", "mine\n"),
		layer(t, "etc/.wh.motd", "", "data/.wh..wh..opq", "", "data/new", "new\n"),
	)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := oci.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_OCI=yes"}
	if oci, err = mutate.ConfigFile(oci, cf); err != nil {
		t.Fatal(err)
	}
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/e2e/alpine:layers"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, oci); err != nil {
		t.Fatal(err)
	}

	b := imageBuilder(t)
	img, err := b.Build(ctx, "e2e-oci", image.BuildOptions{From: "oci:" + ref, Password: e2ePassword, SizeMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build %v, source %s", time.Duration(img.BuildTime), img.Source)
	vm := checkImageVM(t, ctx, img, "alpine", "apk info", "busybox", nil)
	for cmd, want := range map[string]string{
		"test -e /etc/motd || echo whited-out":        "whited-out",
		"ls /data":                                    "new",
		"stat -c %i /links/a /links/b | uniq | wc -l": "1",
		"stat -c '%h %a' /links/a":                    "2 755",
		"stat -c '%u:%g %a' /home/app/owned":          "1234:2345 640",
		"echo $FROM_OCI":                              "yes",
	} {
		if got := strings.TrimSpace(run(t, ctx, vm, cmd).Stdout); got != want {
			t.Errorf("%s = %q, want %q", cmd, got, want)
		}
	}
}

// layer makes a layer from name/content pairs; "links/b" is added as a
// hard link to "links/a", and home/app/owned belongs to 1234:2345.
func layer(t *testing.T, pairs ...string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(pairs); i += 2 {
		h := &tar.Header{Name: pairs[i], Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(pairs[i+1])), ModTime: time.Unix(1700000000, 0)}
		switch pairs[i] {
		case "links/a":
			h.Mode = 0o755
		case "home/app/owned":
			h.Uid, h.Gid, h.Mode = 1234, 2345, 0o640
		}
		tw.WriteHeader(h)
		tw.Write([]byte(pairs[i+1]))
		if pairs[i] == "links/a" {
			tw.WriteHeader(&tar.Header{Name: "links/b", Typeflag: tar.TypeLink, Linkname: "links/a", ModTime: h.ModTime})
		}
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestImageDirAndTar builds from a tree the user prepared and from a
// tarball, and boots both.
func TestImageDirAndTar(t *testing.T) {
	file := alpineRelease(t)
	ctx := testContext(t, 4*time.Minute)
	tree := filepath.Join(t.TempDir(), "rootfs")
	os.MkdirAll(tree, 0o755)
	if out, err := exec.Command("tar", "-xzf", file, "-C", tree).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	os.WriteFile(filepath.Join(tree, "etc/prepared-by-user"), []byte("yes\n"), 0o644)

	b := imageBuilder(t)
	key, pub := userKey(t)
	dirImg, err := b.Build(ctx, "e2e-dir", image.BuildOptions{From: "dir:" + tree, SizeMiB: 96, AuthorizedKeys: []string{pub}})
	if err != nil {
		t.Fatal(err)
	}
	vm := checkImageVM(t, ctx, dirImg, "alpine", "apk info", "musl", key)
	if got := run(t, ctx, vm, "cat /etc/prepared-by-user").Stdout; got != "yes\n" {
		t.Errorf("prepared file = %q", got)
	}
	vm.Delete(ctx)

	tarImg, err := b.Build(ctx, "e2e-tar", image.BuildOptions{From: "tar:" + file, Password: e2ePassword, SizeMiB: 80})
	if err != nil {
		t.Fatal(err)
	}
	checkImageVM(t, ctx, tarImg, "alpine", "apk info", "alpine-baselayout", nil)
}
