// Package cgroup confines a VM's QEMU process in a control group of its
// own (smolvm/<instance>) and sets its CPU quota and memory ceiling, on
// cgroup v2 (one unified hierarchy) or v1 (a hierarchy per controller).
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnavailable says no usable cgroup hierarchy is here (not root, no
// cpu or memory controller): a limit cannot be enforced.
var ErrUnavailable = errors.New("no usable cgroup for the cpu and memory controllers")

// Dir is the directory under a hierarchy that holds the VMs' groups.
const Dir = "smolvm"

// Period is the CPU quota period: 100 ms, the kernel's default.
const Period = 100 * time.Millisecond

// Limits are what a group enforces; zero fields are unlimited.
type Limits struct {
	// CPU is a quota in host CPUs: 0.5 is half of one CPU.
	CPU float64
	// MemoryBytes caps the memory charged to the group.
	MemoryBytes int64
}

// Host says where the hierarchies are. The zero value is useless; use
// Detect. Fields are exported so tests can point it at a fake tree.
type Host struct {
	// V2 is the mount point of a unified hierarchy that has the cpu and
	// memory controllers; empty on a v1 host.
	V2 string
	// CPU and Memory are the v1 directories the groups go under: the
	// hierarchies' own cgroup of this process, so a limit the caller is
	// under (a container's) holds for its VMs too.
	CPU, Memory string
}

// Detect finds the hierarchy to use: pure v2 if its root offers cpu and
// memory, else v1 cpu and memory hierarchies (a hybrid host's unified
// hierarchy without controllers is of no use).
func Detect() (Host, error) {
	return detect("/sys/fs/cgroup", "/proc/self/cgroup")
}

func detect(root, self string) (Host, error) {
	if b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil {
		f := strings.Fields(string(b))
		if has(f, "cpu") && has(f, "memory") {
			return Host{V2: root}, nil
		}
		return Host{}, fmt.Errorf("%w: the cgroup v2 hierarchy at %s has no cpu or memory controller (it offers %q)", ErrUnavailable, root, f)
	}
	own, err := ownV1(self)
	if err != nil {
		return Host{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	h := Host{CPU: filepath.Join(root, "cpu", own["cpu"]), Memory: filepath.Join(root, "memory", own["memory"])}
	for _, d := range []string{h.CPU, h.Memory} {
		if _, err := os.Stat(d); err != nil {
			return Host{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return h, nil
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ownV1 reads this process's v1 cgroups (/proc/self/cgroup lines
// "ID:controllers:path") for cpu and memory.
func ownV1(self string) (map[string]string, error) {
	b, err := os.ReadFile(self)
	if err != nil {
		return nil, err
	}
	own := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "cpu" || c == "memory" {
				own[c] = parts[2]
			}
		}
	}
	if own["cpu"] == "" || own["memory"] == "" {
		return nil, fmt.Errorf("%s names no v1 cpu and memory hierarchies", self)
	}
	return own, nil
}

// Group is one VM's cgroup: one directory on v2, one per hierarchy on v1.
type Group struct {
	// Dirs are the group's directories: [v2] or [cpu, memory].
	Dirs []string `json:"dirs"`
	// V2 says which layout Dirs are in.
	V2 bool `json:"v2,omitempty"`
}

// Create makes (or adopts) the group called name and sets l on it.
func (h Host) Create(name string, l Limits) (Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return Group{}, fmt.Errorf("cgroup name %q: must be one path element", name)
	}
	var g Group
	if h.V2 != "" {
		parent := filepath.Join(h.V2, Dir)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return Group{}, fmt.Errorf("cgroup: %w", err)
		}
		// Controllers must be enabled from the root down to be seen in
		// the group; the root and smolvm/ hold no processes of ours, so
		// the "no internal processes" rule allows it.
		for _, d := range []string{h.V2, parent} {
			if err := write(filepath.Join(d, "cgroup.subtree_control"), "+cpu +memory"); err != nil {
				return Group{}, err
			}
		}
		g = Group{Dirs: []string{filepath.Join(parent, name)}, V2: true}
	} else {
		g = Group{Dirs: []string{filepath.Join(h.CPU, Dir, name), filepath.Join(h.Memory, Dir, name)}}
	}
	for _, d := range g.Dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Group{}, fmt.Errorf("cgroup: %w", err)
		}
	}
	if err := g.Set(l); err != nil {
		g.Remove()
		return Group{}, err
	}
	return g, nil
}

// Set changes the group's limits; a zero field lifts that limit.
func (g Group) Set(l Limits) error {
	if len(g.Dirs) == 0 {
		return errors.New("cgroup: no group")
	}
	quota := int64(l.CPU * float64(Period/time.Microsecond))
	if g.V2 {
		cpu, mem := "max "+strconv.FormatInt(int64(Period/time.Microsecond), 10), "max"
		if l.CPU > 0 {
			cpu = fmt.Sprintf("%d %d", quota, Period/time.Microsecond)
		}
		if l.MemoryBytes > 0 {
			mem = strconv.FormatInt(l.MemoryBytes, 10)
		}
		if err := write(filepath.Join(g.Dirs[0], "cpu.max"), cpu); err != nil {
			return err
		}
		return write(filepath.Join(g.Dirs[0], "memory.max"), mem)
	}
	if len(g.Dirs) != 2 {
		return fmt.Errorf("cgroup: v1 group has %d directories, want 2", len(g.Dirs))
	}
	if l.CPU <= 0 {
		quota = -1
	}
	if err := write(filepath.Join(g.Dirs[0], "cpu.cfs_period_us"), strconv.FormatInt(int64(Period/time.Microsecond), 10)); err != nil {
		return err
	}
	if err := write(filepath.Join(g.Dirs[0], "cpu.cfs_quota_us"), strconv.FormatInt(quota, 10)); err != nil {
		return err
	}
	mem := int64(-1)
	if l.MemoryBytes > 0 {
		mem = l.MemoryBytes
	}
	return write(filepath.Join(g.Dirs[1], "memory.limit_in_bytes"), strconv.FormatInt(mem, 10))
}

// ProcsFiles are the files a process's PID is written to to join g.
func (g Group) ProcsFiles() []string {
	out := make([]string, len(g.Dirs))
	for i, d := range g.Dirs {
		out[i] = filepath.Join(d, "cgroup.procs")
	}
	return out
}

// Add moves process pid (all its threads) into g.
func (g Group) Add(pid int) error {
	for _, f := range g.ProcsFiles() {
		if err := write(f, strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes the group's directories, and smolvm/ above them when
// it is left empty. The group's processes must be gone; a directory that
// is already gone is no error.
func (g Group) Remove() error {
	var errs []error
	for _, d := range g.Dirs {
		// A process that just exited may linger a moment as a member.
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(d); err == nil || errors.Is(err, fs.ErrNotExist) || !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup: %w", err))
		}
		os.Remove(filepath.Dir(d)) // smolvm/, if no other VM's group is in it
	}
	return errors.Join(errs...)
}

// Exists reports whether the group's directories are there.
func (g Group) Exists() bool {
	if len(g.Dirs) == 0 {
		return false
	}
	for _, d := range g.Dirs {
		if _, err := os.Stat(d); err != nil {
			return false
		}
	}
	return true
}

// Usage is what the kernel has charged a group.
type Usage struct {
	CPU         time.Duration // CPU time of its processes
	MemoryBytes int64         // memory charged now
	Throttled   time.Duration // time held back by the CPU quota
}

// Usage reads the group's counters.
func (g Group) Usage() (Usage, error) {
	var u Usage
	if len(g.Dirs) == 0 {
		return u, errors.New("cgroup: no group")
	}
	if g.V2 {
		stat, err := readKV(filepath.Join(g.Dirs[0], "cpu.stat"))
		if err != nil {
			return u, err
		}
		u.CPU = time.Duration(stat["usage_usec"]) * time.Microsecond
		u.Throttled = time.Duration(stat["throttled_usec"]) * time.Microsecond
		u.MemoryBytes, err = readInt(filepath.Join(g.Dirs[0], "memory.current"))
		return u, err
	}
	stat, err := readKV(filepath.Join(g.Dirs[0], "cpu.stat"))
	if err != nil {
		return u, err
	}
	u.Throttled = time.Duration(stat["throttled_time"]) // ns
	// cpuacct may be mounted with cpu or apart; the CPU time is then read
	// from the process instead (see the caller).
	if ns, err := readInt(filepath.Join(g.Dirs[0], "cpuacct.usage")); err == nil {
		u.CPU = time.Duration(ns)
	}
	u.MemoryBytes, err = readInt(filepath.Join(g.Dirs[1], "memory.usage_in_bytes"))
	return u, err
}

// List returns the groups under the hierarchies' smolvm/.
func (h Host) List() []Group {
	var out []Group
	if h.V2 != "" {
		ents, _ := os.ReadDir(filepath.Join(h.V2, Dir))
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, Group{Dirs: []string{filepath.Join(h.V2, Dir, e.Name())}, V2: true})
			}
		}
		return out
	}
	ents, _ := os.ReadDir(filepath.Join(h.CPU, Dir))
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, Group{Dirs: []string{filepath.Join(h.CPU, Dir, e.Name()), filepath.Join(h.Memory, Dir, e.Name())}})
		}
	}
	return out
}

// Name is the group's own name (its directories' base).
func (g Group) Name() string {
	if len(g.Dirs) == 0 {
		return ""
	}
	return filepath.Base(g.Dirs[0])
}

func write(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", value, path, err)
	}
	return nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %s: %w", path, err)
	}
	return n, nil
}

func readKV(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	kv := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				kv[f[0]] = n
			}
		}
	}
	return kv, nil
}
