package smolvm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestFileTransfer(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	// User-mode networking: these tests are about SFTP, not the firewall.
	vm := newVM(t, ctx, smolvm.VMConfig{DiskMiB: 1024}, smolvm.WithNetwork(smolvm.NetworkUser))
	startVM(t, ctx, vm)
	dir := t.TempDir()

	t.Run("50MiB file", func(t *testing.T) {
		data := make([]byte, 50<<20)
		rand.Read(data)
		sum := sha256.Sum256(data)
		src := filepath.Join(dir, "big.bin")
		if err := os.WriteFile(src, data, 0o640); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := vm.Upload(ctx, src, "/root/deep/new/dir/big.bin"); err != nil {
			t.Fatal(err)
		}
		up := time.Since(start)
		res := run(t, ctx, vm, "sha256sum /root/deep/new/dir/big.bin; stat -c %a /root/deep/new/dir/big.bin")
		if want := hex.EncodeToString(sum[:]); !strings.HasPrefix(res.Stdout, want) || !strings.HasSuffix(res.Stdout, "\n640\n") {
			t.Fatalf("in guest: %q, want sum %s and mode 640", res.Stdout, want)
		}
		dst := filepath.Join(dir, "back.bin")
		start = time.Now()
		if err := vm.Download(ctx, "/root/deep/new/dir/big.bin", dst); err != nil {
			t.Fatal(err)
		}
		down := time.Since(start)
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("downloaded file differs (err %v)", err)
		}
		t.Logf("50 MiB upload %v (%.1f MiB/s), download %v (%.1f MiB/s)", up, 50/up.Seconds(), down, 50/down.Seconds())
	})

	t.Run("directory", func(t *testing.T) {
		tree := filepath.Join(dir, "tree")
		os.MkdirAll(filepath.Join(tree, "sub", "deeper"), 0o750)
		os.WriteFile(filepath.Join(tree, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
		os.WriteFile(filepath.Join(tree, "sub", "deeper", "secret"), []byte("s"), 0o600)
		os.Symlink("run.sh", filepath.Join(tree, "link"))
		if err := vm.Upload(ctx, tree, "/opt/tree"); err != nil {
			t.Fatal(err)
		}
		res := run(t, ctx, vm, "/opt/tree/run.sh && stat -c '%n %a' /opt/tree/sub /opt/tree/sub/deeper/secret && readlink /opt/tree/link")
		if want := "ran\n/opt/tree/sub 750\n/opt/tree/sub/deeper/secret 600\nrun.sh\n"; res.Stdout != want {
			t.Fatalf("guest tree: %q, want %q", res.Stdout, want)
		}
		back := filepath.Join(dir, "back")
		if err := vm.Download(ctx, "/opt/tree", back); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]os.FileMode{"run.sh": 0o755, "sub/deeper/secret": 0o600, "sub": 0o750 | os.ModeDir} {
			fi, err := os.Stat(filepath.Join(back, name))
			if err != nil || fi.Mode() != want {
				t.Errorf("%s: %v, want mode %v", name, modeOf(fi, err), want)
			}
		}
		if target, err := os.Readlink(filepath.Join(back, "link")); err != nil || target != "run.sh" {
			t.Errorf("symlink: %q %v", target, err)
		}
	})

	t.Run("into a directory", func(t *testing.T) {
		src := filepath.Join(dir, "note.txt")
		if err := os.WriteFile(src, []byte("note\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, vm, "mkdir -p /opt/into")
		if err := vm.Upload(ctx, src, "/opt/into"); err != nil {
			t.Fatal(err)
		}
		if err := vm.Upload(ctx, filepath.Join(dir, "tree"), "/opt/into/"); err != nil {
			t.Fatal(err)
		}
		if res := run(t, ctx, vm, "cat /opt/into/note.txt /opt/into/tree/sub/deeper/secret"); res.Stdout != "note\ns" {
			t.Fatalf("guest: %q %q, want note.txt and tree inside /opt/into", res.Stdout, res.Stderr)
		}
		into := filepath.Join(dir, "into")
		if err := os.Mkdir(into, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := vm.Download(ctx, "/opt/into/note.txt", into); err != nil {
			t.Fatal(err)
		}
		if err := vm.Download(ctx, "/opt/into", into+"/"); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"note.txt", "into/note.txt", "into/tree/run.sh"} {
			if _, err := os.Stat(filepath.Join(into, name)); err != nil {
				t.Error(err)
			}
		}
		err := vm.Download(ctx, "/opt/into", filepath.Join(into, "note.txt"))
		if !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("tree onto a file: %v, want ErrInvalid", err)
		}
	})

	t.Run("hostile guest", func(t *testing.T) { testDownloadHostileGuest(t, ctx, vm) })
	t.Run("host links", func(t *testing.T) { testUploadHostLinks(t, ctx, vm) })

	t.Run("streams", func(t *testing.T) { testFileStreams(t, ctx, vm) })

	t.Run("missing", func(t *testing.T) {
		if err := vm.Download(ctx, "/no/such/file", filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "/no/such/file") {
			t.Fatalf("got %v", err)
		}
		if err := vm.Upload(ctx, filepath.Join(dir, "nope"), "/root/x"); err == nil {
			t.Fatal("upload of a missing file succeeded")
		}
	})
}

// testFileStreams checks WriteFile and ReadFile: bytes round-trip, the
// mode is applied, parents are made, and wrong targets are clear errors.
func testFileStreams(t *testing.T, ctx context.Context, vm *smolvm.VM) {
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	n, err := vm.WriteFile(ctx, "/tmp/streams/new/data.bin", bytes.NewReader(data), 0o600)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("WriteFile = %d, %v", n, err)
	}
	res, err := vm.Run(ctx, "stat -c %a /tmp/streams/new/data.bin; ls -a /tmp/streams/new")
	if err != nil || res.Stdout != "600\n.\n..\ndata.bin\n" {
		t.Fatalf("guest sees %q, %v (want mode 600 and no temporary file left)", res.Stdout, err)
	}
	var got bytes.Buffer
	if n, err := vm.ReadFile(ctx, "/tmp/streams/new/data.bin", &got); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("ReadFile = %d, %v; equal %v", n, err, bytes.Equal(got.Bytes(), data))
	}
	if _, err := vm.Run(ctx, "mkfifo /tmp/streams/fifo"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{"/tmp/streams/none", os.ErrNotExist},
		{"/tmp/streams", smolvm.ErrInvalid},
		{"/tmp/streams/fifo", smolvm.ErrInvalid},
		{"relative/path", smolvm.ErrInvalid},
	} {
		if _, err := vm.ReadFile(ctx, tc.path, io.Discard); !errors.Is(err, tc.want) {
			t.Errorf("ReadFile(%s) = %v, want %v", tc.path, err, tc.want)
		}
	}
	for _, p := range []string{"/", "/tmp/", "/tmp", "/tmp/streams/new/"} {
		if _, err := vm.WriteFile(ctx, p, strings.NewReader("x"), 0); !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("WriteFile(%s) = %v, want ErrInvalid", p, err)
		}
	}
}

// testDownloadHostileGuest has the guest plant links, device nodes and
// setuid files in a tree, the host copy it, then the guest turn each link
// into a directory or file of the same name and the host copy it again
// into the same place: the trap of a link left by one copy and written
// through by the next. Nothing outside the target may change.
func testDownloadHostileGuest(t *testing.T, ctx context.Context, vm *smolvm.VM) {
	outside := t.TempDir()
	canaryDir, canaryFile := filepath.Join(outside, "canary-dir"), filepath.Join(outside, "canary")
	if err := os.Mkdir(canaryDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(canaryFile, []byte("canary\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	guest := func(script string) {
		t.Helper()
		if res := run(t, ctx, vm, "set -e; "+script); !res.OK() {
			t.Fatalf("guest: exit %d: %s", res.ExitCode, res.Stderr)
		}
	}
	guest(`mkdir -p /hostile/t && cd /hostile/t
		ln -s ` + canaryDir + ` esc
		ln -s ` + canaryFile + ` pw
		ln -s .. up
		echo x > suid && chmod 4755 suid && ln suid hard
		mkdir sgid && chmod 2777 sgid
		echo w > world && chmod 666 world
		mkfifo fifo
		mknod null c 1 3`)
	// "t/." copies the tree's entries into copied itself, the second time
	// too, on top of what the first copy left.
	back := t.TempDir()
	copied := filepath.Join(back, "t")
	if err := os.Mkdir(copied, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := vm.Download(ctx, "/hostile/t/.", copied); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"esc": canaryDir, "pw": canaryFile, "up": ".."} {
		if got, err := os.Readlink(filepath.Join(copied, name)); err != nil || got != want {
			t.Errorf("%s links to %q (%v), want %q", name, got, err, want)
		}
	}
	for name, want := range map[string]os.FileMode{"suid": 0o755, "hard": 0o755, "sgid": os.ModeDir | 0o755, "world": 0o644} {
		if fi, err := os.Lstat(filepath.Join(copied, name)); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, want mode %v", name, modeOf(fi, err), want)
		}
	}
	for _, name := range []string{"fifo", "null"} {
		if _, err := os.Lstat(filepath.Join(copied, name)); err == nil {
			t.Errorf("%s was created on the host", name)
		}
	}

	guest(`cd /hostile/t && rm esc pw up
		mkdir esc up && echo pwned > esc/pwned && echo pwned > up/pwned && echo pwned > pw`)
	if err := vm.Download(ctx, "/hostile/t/.", copied); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(canaryDir); err != nil || len(ents) != 0 {
		t.Errorf("canary directory holds %v (%v); the copy wrote through a link", ents, err)
	}
	if b, err := os.ReadFile(canaryFile); err != nil || string(b) != "canary\n" {
		t.Errorf("canary file: %q (%v); the copy wrote through a link", b, err)
	}
	if _, err := os.Lstat(filepath.Join(back, "pwned")); err == nil {
		t.Error("the copy wrote through the link up -> ..")
	}
	for _, name := range []string{"esc/pwned", "up/pwned", "pw"} {
		if b, err := os.ReadFile(filepath.Join(copied, name)); err != nil || string(b) != "pwned\n" {
			t.Errorf("%s: %q (%v), want the guest's new file in the copy", name, b, err)
		}
	}

	// A sparse file of 15 TiB costs the guest nothing; the host must not
	// try to fill its disk with it.
	const huge = 15 << 40
	var st syscall.Statfs_t
	if err := syscall.Statfs(back, &st); err != nil || st.Bavail*uint64(st.Bsize) >= huge {
		t.Logf("huge file not tried: the host has room for it (%v)", err)
	} else {
		guest("truncate -s 16492674416640 /hostile/huge") // 15 TiB
		if err := vm.Download(ctx, "/hostile/huge", back); err == nil {
			t.Error("a 15 TiB file was downloaded")
		} else {
			t.Logf("huge file: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(back, "huge")); err == nil {
			t.Error("the refused huge file was left on the host")
		}
		if ents, _ := os.ReadDir(back); len(ents) != 1 {
			t.Errorf("the refused download left %v behind", ents)
		}
	}
	if b, err := os.ReadFile("/etc/passwd"); err != nil || !bytes.Equal(b, passwd) {
		t.Errorf("/etc/passwd changed (%v)", err)
	}
}

// testUploadHostLinks checks that links in a host tree are uploaded as
// links: what they point at outside the tree is never read.
func testUploadHostLinks(t *testing.T, ctx context.Context, vm *smolvm.VM) {
	secrets := t.TempDir()
	if err := os.WriteFile(filepath.Join(secrets, "key"), []byte("TOPSECRET\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Symlink(secrets, filepath.Join(tree, "dir"))
	os.Symlink(filepath.Join(secrets, "key"), filepath.Join(tree, "file"))
	if err := vm.Upload(ctx, tree, "/opt/up"); err != nil {
		t.Fatal(err)
	}
	res := run(t, ctx, vm, "readlink /opt/up/dir; readlink /opt/up/file; grep -r TOPSECRET /opt/up; echo grep=$?")
	if want := secrets + "\n" + filepath.Join(secrets, "key") + "\ngrep=1\n"; res.Stdout != want {
		t.Errorf("guest: %q, want %q", res.Stdout, want)
	}
}

// modeOf describes a Stat result in a failure message.
func modeOf(fi os.FileInfo, err error) string {
	if err != nil {
		return err.Error()
	}
	return "mode " + fi.Mode().String()
}
