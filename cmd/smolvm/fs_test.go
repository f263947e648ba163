package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// testFSWatch runs `smolvm --json fs watch` locally and through the
// server: it says when it watches, prints one JSON event a line, and an
// interrupt ends it with status 0.
func testFSWatch(t *testing.T, vm string, clis ...cli) {
	for i, c := range clis {
		c.t = t
		c.ok("fs", "mkdir", "-p", vm, "/root/fsw/watched")
		cmd := exec.Command(c.bin, append(c.pre, "--json", "fs", "watch", vm, "/root/fsw/watched")...)
		cmd.Env = append(cmd.Environ(), "SMOLVM_HOME="+c.home, "SMOLVM_HOST=", "SMOLVM_TOKEN=")
		cmd.Env = append(cmd.Env, c.env...)
		stdout, _ := cmd.StdoutPipe()
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		t.Cleanup(func() {
			cmd.Process.Kill()
		})
		errLines := bufio.NewScanner(stderr)
		if !errLines.Scan() || !strings.HasPrefix(errLines.Text(), "watching ") {
			t.Fatalf("%d: fs watch said %q first, want watching", i, errLines.Text())
		}
		go func() {
			for errLines.Scan() {
				t.Logf("fs watch stderr: %s", errLines.Text())
			}
		}()
		c.ok("exec", vm, "--", "sh", "-c", "cd /root/fsw/watched && echo x > f && mv f g")
		lines := bufio.NewScanner(stdout)
		var got []string
		for lines.Scan() {
			var e smolvm.WatchEvent
			if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
				t.Fatalf("fs watch line %q: %v", lines.Text(), err)
			}
			got = append(got, string(e.Op)+" "+e.OldPath+">"+e.Path)
			if e.Op == smolvm.WatchRename {
				break
			}
		}
		if want := "create >f|modify >f|rename f>g"; strings.Join(got, "|") != want {
			t.Errorf("%d: events %q, want %q", i, strings.Join(got, "|"), want)
		}
		go func() { exited <- cmd.Wait() }()
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%d: fs watch ended with %v after SIGINT, want status 0", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%d: fs watch still runs 30s after SIGINT", i)
		}
		c.ok("fs", "rm", "-r", vm, "/root/fsw/watched")
	}
}

// testCpArchive copies with -a both ways, locally and through the server:
// modes (group write too) and modification times survive, for a tree and
// for one file.
func testCpArchive(t *testing.T, vm string, clis ...cli) {
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o775)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("f"), 0o664)
	os.Chmod(filepath.Join(src, "sub"), 0o775)
	os.Chmod(filepath.Join(src, "sub", "f"), 0o664)
	for _, p := range []string{"sub/f", "sub", "."} {
		os.Chtimes(filepath.Join(src, p), old, old)
	}
	for i, c := range clis {
		c.t = t
		g := fmt.Sprintf("/root/cpa%d", i)
		c.ok("fs", "mkdir", vm, g)
		c.ok("cp", "-a", src, vm+":"+g)
		c.ok("cp", "-a", filepath.Join(src, "sub", "f"), vm+":"+g+"/one")
		for _, p := range []string{g + "/tree/sub/f", g + "/tree/sub", g + "/one"} {
			var fi smolvm.FileInfo
			c.json(&fi, "fs", "stat", vm, p)
			if !fi.ModTime.Equal(old) || fi.Perm&0o020 == 0 {
				t.Errorf("%d: %s in the guest: %+v, want mtime %s and group write", i, p, fi, old)
			}
		}
		dst := t.TempDir()
		c.ok("cp", "-a", vm+":"+g+"/tree", dst)
		c.ok("cp", "-a", vm+":"+g+"/one", filepath.Join(dst, "one"))
		for _, p := range []string{"tree/sub/f", "tree/sub", "one"} {
			fi, err := os.Stat(filepath.Join(dst, p))
			if err != nil || !fi.ModTime().Equal(old) || fi.Mode().Perm()&0o020 == 0 {
				t.Errorf("%d: %s on the host: %v %v, want mtime %s and group write", i, p, fi.Mode(), fi.ModTime(), old)
			}
		}
		// Without -a, as cp under umask 022: no group write on the host.
		c.ok("cp", vm+":"+g+"/one", filepath.Join(dst, "plain"))
		if fi, err := os.Stat(filepath.Join(dst, "plain")); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%d: cp without -a: %v, want 0644", i, fi.Mode())
		}
	}
}

func TestFSLines(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 0, 0, time.Local)
	for _, tc := range []struct {
		e    smolvm.FileInfo
		want string
	}{
		{smolvm.FileInfo{Name: "f", Type: "file", Size: 3, Perm: 0o640, ModTime: at}, "-rw-r-----          3 2026-01-02 03:04 f"},
		{smolvm.FileInfo{Name: "l", Type: "symlink", Size: 1, Perm: 0o777, ModTime: at, Target: "f"}, "lrwxrwxrwx          1 2026-01-02 03:04 l -> f"},
		{smolvm.FileInfo{Name: "d", Type: "dir", Perm: 0o755, ModTime: at}, "drwxr-xr-x          0 2026-01-02 03:04 d"},
		// A guest's name with a terminal escape is quoted, not printed.
		{smolvm.FileInfo{Name: "x\x1b[2J", Type: "file", Perm: 0o644, ModTime: at}, `-rw-r--r--          0 2026-01-02 03:04 "x\x1b[2J"`},
	} {
		if got := lsLine(tc.e); got != tc.want {
			t.Errorf("lsLine:\n%s\nwant\n%s", got, tc.want)
		}
	}
	for e, want := range map[smolvm.WatchEvent]string{
		{Op: smolvm.WatchRename, OldPath: "a", Path: "b", Dir: true}: "rename a/ -> b/",
		{Op: smolvm.WatchCreate, Path: "n\x07"}:                      `create "n\a"`,
		{Op: smolvm.WatchOverflow, Dropped: 3, Message: "3 dropped"}: "overflow 3 dropped",
	} {
		if got := watchLine(e); got != want {
			t.Errorf("watchLine(%+v) = %q, want %q", e, got, want)
		}
	}
}
