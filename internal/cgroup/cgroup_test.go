package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree lays out a cgroup mount point with plain files, which is all
// Detect and Set look at; the kernel's own behaviour (moving processes,
// enforcing) is covered by the VM tests.
func fakeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDetect(t *testing.T) {
	v1self := "4:memory:/job/42\n2:cpu,cpuacct:/\n0::/\n"
	tests := []struct {
		name  string
		files map[string]string
		self  string
		want  func(root string) Host
		bad   string
	}{
		{"v2", map[string]string{"cgroup.controllers": "cpuset cpu io memory pids\n"}, "0::/\n",
			func(root string) Host { return Host{V2: root} }, ""},
		{"v2 without memory", map[string]string{"cgroup.controllers": "cpu io\n"}, "0::/\n", nil, "no cpu or memory controller"},
		{"v1 (hybrid), nested under the caller's memory cgroup",
			map[string]string{"cpu/tasks": "", "memory/job/42/tasks": "", "unified/cgroup.controllers": ""}, v1self,
			func(root string) Host {
				return Host{CPU: filepath.Join(root, "cpu"), Memory: filepath.Join(root, "memory", "job", "42")}
			}, ""},
		{"v1 without memory", map[string]string{"cpu/tasks": ""}, "2:cpu:/\n", nil, "no v1 cpu and memory"},
		{"v1 hierarchy not mounted", map[string]string{"cpu/tasks": ""}, v1self, nil, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeTree(t, tt.files)
			self := filepath.Join(t.TempDir(), "cgroup")
			os.WriteFile(self, []byte(tt.self), 0o644)
			h, err := detect(root, self)
			if tt.bad != "" {
				if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("got %+v, %v; want ErrUnavailable mentioning %q", h, err, tt.bad)
				}
				return
			}
			if err != nil || h != tt.want(root) {
				t.Fatalf("got %+v, %v; want %+v", h, err, tt.want(root))
			}
		})
	}
}

func TestGroupV1(t *testing.T) {
	root := fakeTree(t, nil)
	h := Host{CPU: filepath.Join(root, "cpu"), Memory: filepath.Join(root, "memory")}
	g, err := h.Create("inst1", Limits{CPU: 0.25, MemoryBytes: 640 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cpu, mem := filepath.Join(h.CPU, Dir, "inst1"), filepath.Join(h.Memory, Dir, "inst1")
	if g.V2 || len(g.Dirs) != 2 || g.Dirs[0] != cpu || g.Dirs[1] != mem || g.Name() != "inst1" {
		t.Fatalf("group = %+v", g)
	}
	for file, want := range map[string]string{
		filepath.Join(cpu, "cpu.cfs_period_us"):     "100000",
		filepath.Join(cpu, "cpu.cfs_quota_us"):      "25000",
		filepath.Join(mem, "memory.limit_in_bytes"): "671088640",
	} {
		if got := read(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := g.Set(Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(cpu, "cpu.cfs_quota_us")); got != "-1" {
		t.Errorf("quota lifted = %q, want -1", got)
	}
	if got := read(t, filepath.Join(mem, "memory.limit_in_bytes")); got != "-1" {
		t.Errorf("memory lifted = %q, want -1", got)
	}
	if l := h.List(); len(l) != 1 || l[0].Name() != "inst1" {
		t.Errorf("List = %+v", l)
	}
	if got := g.ProcsFiles(); got[0] != filepath.Join(cpu, "cgroup.procs") || got[1] != filepath.Join(mem, "cgroup.procs") {
		t.Errorf("ProcsFiles = %v", got)
	}
}

func TestGroupV2(t *testing.T) {
	root := fakeTree(t, map[string]string{"cgroup.controllers": "cpu memory"})
	h := Host{V2: root}
	g, err := h.Create("inst2", Limits{CPU: 1.5})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, Dir, "inst2")
	if !g.V2 || len(g.Dirs) != 1 || g.Dirs[0] != dir {
		t.Fatalf("group = %+v", g)
	}
	for file, want := range map[string]string{
		filepath.Join(root, "cgroup.subtree_control"):      "+cpu +memory",
		filepath.Join(root, Dir, "cgroup.subtree_control"): "+cpu +memory",
		filepath.Join(dir, "cpu.max"):                      "150000 100000",
		filepath.Join(dir, "memory.max"):                   "max",
	} {
		if got := read(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 1500000\nuser_usec 1000000\nthrottled_usec 250\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "memory.current"), []byte("123456\n"), 0o644)
	u, err := g.Usage()
	if err != nil || u.CPU.Microseconds() != 1500000 || u.Throttled.Microseconds() != 250 || u.MemoryBytes != 123456 {
		t.Errorf("Usage = %+v, %v", u, err)
	}
}

func TestCreateRefusesPaths(t *testing.T) {
	h := Host{V2: t.TempDir()}
	for _, name := range []string{"", "..", ".", "a/b", "x\x00"} {
		if _, err := h.Create(name, Limits{}); err == nil {
			t.Errorf("Create(%q) made a group", name)
		}
	}
}

// TestRemove: a group goes with its smolvm/ parent once that is empty;
// removing one that is gone is no error.
func TestRemove(t *testing.T) {
	root := t.TempDir()
	h := Host{CPU: filepath.Join(root, "cpu"), Memory: filepath.Join(root, "memory")}
	// Real cgroup directories hold only kernel files rmdir ignores; here
	// the group's limit files are plain files, so Remove of it is tried
	// on a group made by hand.
	g := Group{Dirs: []string{filepath.Join(h.CPU, Dir, "x"), filepath.Join(h.Memory, Dir, "x")}}
	for _, d := range g.Dirs {
		os.MkdirAll(d, 0o755)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(g.Dirs, filepath.Join(h.CPU, Dir)) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", d, err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}
