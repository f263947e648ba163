package smolvm_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestMounts(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	ro, rw := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ro, "input.txt"), []byte("from host\n"), 0o644)
	// Root's folders are shared only when open to others: QEMU runs as an
	// unprivileged user of the VM's own.
	os.Chmod(ro, 0o755)
	os.Chmod(rw, 0o777)
	vm := newVM(t, ctx, smolvm.VMConfig{Mounts: []smolvm.Mount{
		{HostPath: ro, GuestPath: "/data"},
		{HostPath: rw, GuestPath: "/mnt/out", Writable: true},
	}})
	startVM(t, ctx, vm)
	if got := run(t, ctx, vm, "cat /data/input.txt").Stdout; got != "from host\n" {
		t.Fatalf("read-only mount: %q", got)
	}
	if res := run(t, ctx, vm, "echo x > /data/new.txt"); res.OK() || !strings.Contains(res.Stderr, "Read-only") {
		t.Fatalf("write to a read-only mount: %+v", res)
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a read-only mount let the guest write to the host")
	}
	run(t, ctx, vm, "mkdir -p /mnt/out/sub && echo result > /mnt/out/sub/r.txt")
	if b, err := os.ReadFile(filepath.Join(rw, "sub", "r.txt")); err != nil || string(b) != "result\n" {
		t.Fatalf("writable mount on the host: %q %v", b, err)
	}

	t.Run("guest root plants nothing the host honours", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: runs the planted files as user nobody")
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("setpriv (util-linux) is not installed")
		}
		// A host program the guest can copy: Alpine's own binaries need
		// musl, which the host lacks.
		idBin, err := os.ReadFile("/usr/bin/id")
		if err != nil {
			t.Skip("no /usr/bin/id on the host")
		}
		os.WriteFile(filepath.Join(rw, "id.src"), idBin, 0o644)
		// Let nobody reach the share, as it could reach any shared folder.
		for d := filepath.Dir(rw); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		res := run(t, ctx, vm, `cd /mnt/out || exit 1
			cp id.src suid; chown 0:0 suid; chmod 4755 suid
			cp id.src sgid; chown 0:0 sgid; chmod 2755 sgid
			mknod mem c 1 1
			mkfifo fifo
			ln -s /etc/shadow link
			ln suid hard
			stat -c '%a %u %F' suid sgid mem fifo
			readlink link`)
		// The guest still sees what it made: the metadata is mapped, not lost.
		if want := "4755 0 regular file\n2755 0 regular file\n644 0 character special file\n644 0 fifo\n/etc/shadow\n"; res.Stdout != want {
			t.Errorf("guest view: %+v, want %q", res, want)
		}
		for _, name := range []string{"suid", "sgid", "mem", "fifo", "link", "hard"} {
			fi, err := os.Lstat(filepath.Join(rw, name))
			if err != nil {
				t.Errorf("host: %v", err)
				continue
			}
			if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 || !fi.Mode().IsRegular() {
				t.Errorf("host sees %s as %v, want a plain regular file", name, fi.Mode())
			}
		}
		for _, name := range []string{"suid", "sgid", "hard"} {
			out, err := exec.CommandContext(ctx, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
				filepath.Join(rw, name), "-u").CombinedOutput()
			if err == nil && strings.TrimSpace(string(out)) != "65534" {
				t.Errorf("nobody ran the guest's %s and got euid %q", name, out)
			}
			out, err = exec.CommandContext(ctx, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
				filepath.Join(rw, name), "-g").CombinedOutput()
			if err == nil && strings.TrimSpace(string(out)) != "65534" {
				t.Errorf("nobody ran the guest's %s and got egid %q", name, out)
			}
		}
	})
}

func TestParseMount(t *testing.T) {
	wd, _ := os.Getwd()
	tests := []struct {
		in   string
		want smolvm.Mount
		ok   bool
	}{
		{"/srv/data", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/mnt/data"}, true},
		{"/srv/data:rw", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/mnt/data", Writable: true}, true},
		{"/srv/data:/data:ro", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data"}, true},
		{"/srv/data:/data:rw", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data", Writable: true}, true},
		{"sub:/x", smolvm.Mount{HostPath: filepath.Join(wd, "sub"), GuestPath: "/x"}, true},
		{".:/x", smolvm.Mount{HostPath: wd, GuestPath: "/x"}, true},
		{"", smolvm.Mount{}, false},
		{":rw", smolvm.Mount{}, false},
		{":/data", smolvm.Mount{}, false},
		{":/data:rw", smolvm.Mount{}, false},
		{"/a:/b:/c", smolvm.Mount{}, false},
	}
	for _, tt := range tests {
		got, err := smolvm.ParseMount(tt.in)
		var ve *smolvm.ValidationError
		switch {
		case tt.ok && (err != nil || got != tt.want):
			t.Errorf("%q: got %+v, %v; want %+v", tt.in, got, err, tt.want)
		case !tt.ok && (!errors.As(err, &ve) || !errors.Is(err, smolvm.ErrInvalid)):
			t.Errorf("%q: got %+v, %v; want a ValidationError", tt.in, got, err)
		}
	}
}

func TestMountValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	tests := []struct {
		m      smolvm.Mount
		reason string
	}{
		{smolvm.Mount{HostPath: "", GuestPath: "/data"}, "empty"},
		{smolvm.Mount{HostPath: "rel", GuestPath: "/data"}, "absolute"},
		{smolvm.Mount{HostPath: "/no/such/dir", GuestPath: "/data"}, "does not exist"},
		{smolvm.Mount{HostPath: file, GuestPath: "/data"}, "not a directory"},
		{smolvm.Mount{HostPath: dir, GuestPath: "relative"}, "absolute"},
		{smolvm.Mount{HostPath: dir, GuestPath: "/with space"}, "without spaces"},
		{smolvm.Mount{HostPath: dir, GuestPath: "/"}, "other than /"},
	}
	for _, tt := range tests {
		err := smolvm.VMConfig{Mounts: []smolvm.Mount{tt.m}}.Validate()
		var ve *smolvm.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("mount %+v: %v, want a ValidationError saying %q", tt.m, err, tt.reason)
		}
	}
	if err := (smolvm.VMConfig{Mounts: []smolvm.Mount{{HostPath: dir, GuestPath: "/data"}}}).Validate(); err != nil {
		t.Errorf("a good mount: %v", err)
	}
}

// TestMountWithoutXattrs shares a folder on a filesystem without user
// xattrs (ramfs): the guest's metadata then lives in files in the share,
// and still nothing the guest makes is setuid on the host.
func TestMountWithoutXattrs(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a ramfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ramfs", "ramfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a ramfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		// The VM's QEMU may hold the share for a moment after its delete
		// returned (a process's files are released as it exits).
		for range 50 {
			if exec.Command("umount", dir).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	// A folder of a non-root user's: QEMU runs as that user.
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{Mounts: []smolvm.Mount{{HostPath: dir, GuestPath: "/mnt/out", Writable: true}}})
	startVM(t, ctx, vm)
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", vm.Info().PID)); err != nil || !strings.Contains(string(status), "\nUid:\t65534\t") {
		t.Errorf("QEMU of a VM sharing nobody's folder does not run as nobody: %v\n%s", err, status)
	}
	res := run(t, ctx, vm, "cd /mnt/out && echo hi > f && chmod 4755 f && mknod mem c 1 1 && stat -c '%a %F' f mem && cat f")
	if res.Stdout != "4755 regular file\n644 character special file\nhi\n" {
		t.Errorf("guest: %+v", res)
	}
	for _, name := range []string{"f", "mem"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Errorf("host sees %s as %v (%v), want a plain regular file", name, fi.Mode(), err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".virtfs_metadata")); err != nil {
		t.Errorf("no mapped-file metadata in the share: %v", err)
	}
}
