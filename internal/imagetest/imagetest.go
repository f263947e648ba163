// Package imagetest holds what the tests of image and image/oci share:
// reading ext4 images with debugfs, a stand-in agent, the local Alpine
// release, and a server that never answers. Only tests import it.
package imagetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// StandInAgent builds a static do-nothing binary into dir and returns its
// path: image builds need an agent to hash and to put in the initramfs,
// but tests that boot nothing need no real one.
func StandInAgent(dir string) (string, error) {
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		return "", err
	}
	agent := filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agent, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building a stand-in agent: %w\n%s", err, out)
	}
	return agent, nil
}

// AlpineFile returns the real Alpine release file, named file, from the
// environment variable env (image.AlpineSourceEnv: the file or the
// directory holding it), or skips. (Package image's own tests use this
// package, so it cannot import image for the names.)
func AlpineFile(t *testing.T, env, file string) string {
	t.Helper()
	src := os.Getenv(env)
	if src == "" {
		t.Skipf("%s is unset: point it at the Alpine minirootfs %s (or the directory holding it)", env, file)
	}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		src = filepath.Join(src, file)
	}
	if _, err := os.Stat(src); err != nil {
		t.Skipf("%s: %v", env, err)
	}
	return src
}

// RequireTools skips unless mke2fs and debugfs are installed.
func RequireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (apt-get install e2fsprogs)", tool)
		}
	}
}

// Debugfs runs a debugfs request against an ext4 image.
func Debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %q: %v\n%s", req, err, out)
	}
	return string(out)
}

// CatFile returns a file's contents from an ext4 image.
func CatFile(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// Inode is what debugfs stat says about a path.
type Inode struct {
	Inode, Links, UID, GID int
	Mode                   string // octal, with type bits
	Kind                   string
}

// StatFile stats path in an ext4 image; false if it does not exist.
func StatFile(t *testing.T, img, path string) (Inode, bool) {
	t.Helper()
	out := Debugfs(t, img, "stat "+path)
	if strings.Contains(out, "File not found") {
		return Inode{}, false
	}
	var in Inode
	f := strings.Fields(strings.NewReplacer(":", " : ").Replace(out))
	for i := 0; i+2 < len(f); i++ {
		v := f[i+2]
		switch f[i] {
		case "Inode":
			in.Inode, _ = strconv.Atoi(v)
		case "Type":
			in.Kind = v
		case "Mode":
			in.Mode = v
		case "User":
			in.UID, _ = strconv.Atoi(v)
		case "Group":
			in.GID, _ = strconv.Atoi(v)
		case "Links":
			in.Links, _ = strconv.Atoi(v)
		}
	}
	return in, true
}

// Fsck checks an ext4 image read-only.
func Fsck(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck %s: %v\n%s", img, err, out)
	}
}

// BlackHole accepts connections and never answers; it returns its
// http:// URL.
func BlackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}
