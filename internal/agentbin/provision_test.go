package agentbin

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// requireGo skips where no Go toolchain can build the agent.
func requireGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not on PATH: the agent cannot be built here")
	}
}

// TestProvision builds the agent from this checkout, from three callers
// at once: one build, one file, private, static, and found again
// without building.
func TestProvision(t *testing.T) {
	requireGo(t)
	dir := filepath.Join(t.TempDir(), "cache", "agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		out   bytes.Buffer
		paths = make([]string, 3)
		errs  = make([]error, 3)
	)
	for i := range paths {
		wg.Go(func() {
			var b bytes.Buffer
			paths[i], errs[i] = Provision(ctx, Options{CacheDir: dir, Progress: &b})
			mu.Lock()
			out.Write(b.Bytes())
			mu.Unlock()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
		if paths[i] != paths[0] {
			t.Fatalf("callers got different agents: %q", paths)
		}
	}
	if n := strings.Count(out.String(), "building the smolvm guest agent"); n != 1 {
		t.Errorf("%d builds for three concurrent callers, want 1:\n%s", n, out.String())
	}
	t.Logf("progress:\n%s", out.String())

	fi, err := os.Lstat(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o700 {
		t.Errorf("agent mode %v, want a regular file 0700", fi.Mode())
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("cache directory %s: %v, %v; want 0700", d, fi.Mode(), err)
		}
	}
	f, err := elf.Open(paths[0])
	if err != nil {
		t.Fatalf("agent is not an ELF binary: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("agent is dynamically linked")
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 { // the agent and .lock
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("cache holds %v; want the agent and the lock only", names)
	}

	var again bytes.Buffer
	start := time.Now()
	p, err := Provision(ctx, Options{CacheDir: dir, Progress: &again})
	if err != nil || p != paths[0] || again.Len() != 0 {
		t.Errorf("second provision: %q, %v, progress %q; want the same file, no build", p, err, again.String())
	}
	t.Logf("cached lookup took %v", time.Since(start))
}

// TestProvisionRefuses covers what must not become a VM's PID 1, and a
// machine that cannot build: each fails with ErrNoAgent, says how to name
// an agent instead, and leaves no agent behind.
func TestProvisionRefuses(t *testing.T) {
	requireGo(t)
	ctx := context.Background()
	src, err := FindSource(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	key, err := sourceKey(src)
	if err != nil {
		t.Fatal(err)
	}
	failingGo := filepath.Join(t.TempDir(), "go")
	if err := os.WriteFile(failingGo, []byte("#!/bin/sh\necho 'compile: boom' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) // dir: the cache dir, not yet made
		goCmd string
		want  string
	}{
		{name: "no go toolchain", goCmd: filepath.Join(t.TempDir(), "missing-go"), want: "missing-go"},
		{name: "build fails", goCmd: failingGo, want: "compile: boom"},
		{
			name: "parent writable by others",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(filepath.Dir(dir), 0o700)
				os.Chmod(filepath.Dir(dir), 0o777)
			},
			want: "writable by other users",
		},
		{
			name: "cache owned by another user",
			setup: func(t *testing.T, dir string) {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give a directory away")
				}
				os.MkdirAll(dir, 0o700)
				if err := os.Chown(dir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			want: "belongs to uid 65534",
		},
		{
			name: "cache is a symlink",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(filepath.Dir(dir), 0o700)
				os.Symlink(t.TempDir(), dir)
			},
			want: "not a directory",
		},
		{
			name: "cached agent writable by others",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(dir, 0o700)
				p := filepath.Join(dir, "smolvm-agent-"+key)
				os.WriteFile(p, []byte("planted"), 0o700)
				os.Chmod(p, 0o722)
			},
			want: "remove it",
		},
		{
			name: "cached agent is a symlink",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(dir, 0o700)
				os.Symlink("/bin/sh", filepath.Join(dir, "smolvm-agent-"+key))
			},
			want: "remove it",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache", "agent")
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			p, err := Provision(ctx, Options{CacheDir: dir, Go: tt.goCmd})
			if err == nil {
				t.Fatalf("provisioned %s", p)
			}
			if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), tt.want) ||
				!strings.Contains(err.Error(), "SMOLVM_AGENT") || !strings.Contains(err.Error(), "smolvm.WithAgent") {
				t.Errorf("error %q: want ErrNoAgent saying %q and naming SMOLVM_AGENT and smolvm.WithAgent", err, tt.want)
			}
			if ents, _ := filepath.Glob(filepath.Join(dir, ".build-*")); len(ents) > 0 {
				t.Errorf("left build debris %v", ents)
			}
		})
	}
}

// TestPrune: agents unused for unusedFor and killed builds' directories
// go; recent agents and the one just built stay.
func TestPrune(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-unusedFor - time.Hour)
	files := map[string]bool{ // name -> kept
		"smolvm-agent-devel-old":    false,
		"smolvm-agent-v1.0.0-old":   false,
		"smolvm-agent-devel-recent": true,
		"smolvm-agent-devel-keep":   true,
		".lock":                     true,
		"unrelated":                 true,
	}
	for name, kept := range files {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("x"), 0o700)
		if !kept || name == "smolvm-agent-devel-keep" || name == ".lock" || name == "unrelated" {
			os.Chtimes(p, old, old)
		}
	}
	debris := filepath.Join(dir, ".build-123")
	os.Mkdir(debris, 0o700)
	os.WriteFile(filepath.Join(debris, "smolvm-agent"), []byte("half"), 0o700)
	files[".build-123"] = false // however recent: no build runs while prune does

	prune(dir, filepath.Join(dir, "smolvm-agent-devel-keep"), time.Now().Add(-unusedFor), slog.New(slog.DiscardHandler))
	for name, kept := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		if exists := err == nil; exists != kept {
			t.Errorf("%s: exists %v, want %v", name, exists, kept)
		}
	}
}

// TestUntrustedSource: a module source another user owns, or anyone may
// write, is not built.
func TestUntrustedSource(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "cmd", "smolvm-agent"), 0o755)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module "+ModulePath+"\n"), 0o644)
	if err := trustedSource(dir); err != nil {
		t.Fatalf("own source refused: %v", err)
	}
	os.Chmod(filepath.Join(dir, "go.mod"), 0o666)
	if err := trustedSource(dir); err == nil || !strings.Contains(err.Error(), "go.mod") {
		t.Errorf("world-writable go.mod: %v", err)
	}
	os.Chmod(filepath.Join(dir, "go.mod"), 0o644)
	if os.Geteuid() == 0 {
		os.Chown(filepath.Join(dir, "cmd", "smolvm-agent"), 65534, 65534)
		if err := trustedSource(dir); err == nil {
			t.Error("a directory of another user's accepted")
		}
	}
}

// TestSourceKey: the key follows the Go sources, go.mod and go.sum, not
// tests, docs or nested modules.
func TestSourceKey(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, data string) {
		t.Helper()
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module "+ModulePath+"\n\ngo 1.26\n")
	write("cmd/smolvm-agent/main.go", "package main\nfunc main() {}\n")
	if !isModuleRoot(dir) {
		t.Fatal("a directory with smolvm's go.mod and cmd/smolvm-agent is not taken for the module")
	}
	src := Source{Dir: dir, Version: "(devel)"}
	key := func() string {
		t.Helper()
		k, err := sourceKey(src)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key()
	if !strings.HasPrefix(base, "devel-") {
		t.Errorf("key %q: want devel-<hash>", base)
	}
	same := []struct{ rel, data string }{
		{"README.md", "docs"},
		{"internal/agent/agent_test.go", "package agent"},
		{"internal/agent/testdata/x.go", "package x"},
		{".git/x.go", "package x"},
		{"scratch/go.mod", "module scratch"},
		{"scratch/main.go", "package main"},
	}
	for _, c := range same {
		write(c.rel, c.data)
		if k := key(); k != base {
			t.Errorf("adding %s changed the key", c.rel)
		}
	}
	changed := map[string]bool{base: true}
	for _, c := range []struct{ rel, data string }{
		{"internal/agent/agent.go", "package agent"},
		{"cmd/smolvm-agent/main.go", "package main\nfunc main() { println() }\n"},
		{"go.sum", "x v1 h1:"},
	} {
		write(c.rel, c.data)
		k := key()
		if changed[k] {
			t.Errorf("changing %s kept the key %s", c.rel, k)
		}
		changed[k] = true
	}
	src.Version = "v1.2.3"
	if k := key(); !strings.HasPrefix(k, "v1.2.3-") {
		t.Errorf("key %q: want v1.2.3-<hash>", k)
	}
	write("go.mod", "module example.com/other\n")
	if isModuleRoot(dir) {
		t.Error("another module's go.mod is taken for smolvm's")
	}
}
