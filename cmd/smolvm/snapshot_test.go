package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestSnapshotCLI drives snapshot create, list, inspect and rm, create and
// run --from-snapshot and fork through the built binary; at most three
// VMs run at once.
func TestSnapshotCLI(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(c.home, "vms", "*", "console.log"))
			for _, l := range logs {
				if b, err := os.ReadFile(l); err == nil {
					t.Logf("%s:\n%s", l, b)
				}
			}
		}
		if r := c.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		var snaps []smolvm.SnapshotInfo
		c.json(&snaps, "snapshot", "list")
		for _, s := range snaps {
			c.run("snapshot", "rm", s.Name)
		}
		checkNoLeaks(t, c.home, nil)
	})
	// Small memory: a memory snapshot copies all of it.
	c.ok("create", "--name", "src", "--memory", "256")
	c.ok("exec", "src", "--", "sh", "-c", "echo kept > /root/f; sync")

	var mem smolvm.SnapshotInfo
	c.json(&mem, "snapshot", "create", "src", "s1")
	if mem.Name != "s1" || mem.SourceVM != "src" || mem.DiskOnly || mem.MemoryMiB != 256 || mem.Paused <= 0 || mem.SizeBytes <= 0 {
		t.Errorf("snapshot create --json: %+v", mem)
	}
	t.Logf("memory snapshot: paused %s, %d MiB", mem.Paused, mem.SizeBytes>>20)
	out := c.ok("snapshot", "create", "--disk-only", "src", "d1")
	if !strings.HasPrefix(out, "d1 (paused ") {
		t.Errorf("snapshot create --disk-only: %q, want the name and the pause", out)
	}
	var bad jsonError
	r := c.run("--json", "snapshot", "create", "src", "s1")
	if json.Unmarshal([]byte(r.stdout), &bad); r.code != 1 || bad.Kind != "already_exists" {
		t.Errorf("snapshot create of an existing name: exit %d, %s", r.code, r.stdout)
	}
	r = c.run("--json", "snapshot", "create", "src", "no/slash")
	if json.Unmarshal([]byte(r.stdout), &bad); r.code != 1 || bad.Kind != "invalid" {
		t.Errorf("snapshot create of a bad name: exit %d, %s", r.code, r.stdout)
	}

	var snaps []smolvm.SnapshotInfo
	c.json(&snaps, "snapshot", "list")
	byName := map[string]smolvm.SnapshotInfo{}
	for _, s := range snaps {
		byName[s.Name] = s
	}
	if len(snaps) != 2 || !byName["d1"].DiskOnly || byName["s1"].DiskOnly {
		t.Errorf("snapshot list --json: %+v", snaps)
	}
	var got smolvm.SnapshotInfo
	c.json(&got, "snapshot", "inspect", "s1")
	if !reflect.DeepEqual(got, byName["s1"]) {
		t.Errorf("snapshot inspect --json: %+v\nlist says %+v", got, byName["s1"])
	}
	if out := c.ok("snapshot", "list"); !strings.Contains(out, "s1 ") || !strings.Contains(out, "memory") || !strings.Contains(out, "d1 ") || !strings.Contains(out, "disk") {
		t.Errorf("snapshot list: %q", out)
	}
	if out := c.ok("__complete", "snapshot", "inspect", ""); !strings.Contains(out, "s1\tmemory snapshot of src") || !strings.Contains(out, "d1\tdisk snapshot of src") {
		t.Errorf("completion of snapshot names: %q", out)
	}
	if out := c.ok("__complete", "create", "--from-snapshot", ""); !strings.Contains(out, "s1\t") {
		t.Errorf("completion of --from-snapshot: %q", out)
	}
	if out := c.ok("snapshot", "inspect", "d1"); !strings.Contains(out, "Source VM:") || !strings.Contains(out, "disk only") {
		t.Errorf("snapshot inspect: %q", out)
	}

	// A disk-only snapshot boots.
	var res execResult
	r = c.run("--json", "run", "--from-snapshot", "d1", "--", "sh", "-c", "uname -a; cat /root/f")
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 0 || res.Stdout == nil || !strings.Contains(*res.Stdout, "Linux") || !strings.HasSuffix(*res.Stdout, "kept\n") {
		t.Errorf("run --from-snapshot d1: exit %d, %s %s", r.code, r.stdout, r.stderr)
	}
	r = c.run("run", "--from-snapshot", "s1", "--memory", "512", "--", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "--memory") {
		t.Errorf("run --from-snapshot --memory: exit %d, %s", r.code, r.stderr)
	}
	r = c.run("--json", "run", "--from-snapshot", "nope", "--", "true")
	if json.Unmarshal([]byte(r.stdout), &bad); r.code != 1 || bad.Kind != "not_found" {
		t.Errorf("run --from-snapshot of no snapshot: exit %d, %s", r.code, r.stdout)
	}

	// A memory snapshot resumes.
	began := time.Now()
	var info smolvm.VMInfo
	c.json(&info, "create", "--from-snapshot", "s1", "--name", "c1")
	t.Logf("create --from-snapshot: %s", time.Since(began).Round(time.Millisecond))
	if info.ID != "c1" || info.State != smolvm.StateRunning || info.FromSnapshot != "s1" || info.BootPath != "snapshot" {
		t.Errorf("create --from-snapshot --json: %+v", info)
	}
	if out := c.ok("exec", "c1", "--", "sh", "-c", "cat /root/f; hostname"); out != "kept\nc1\n" {
		t.Errorf("VM from a snapshot: %q", out)
	}
	if out := c.ok("info", "c1"); !regexp.MustCompile(`(?m)^From snapshot:\s+s1$`).MatchString(out) || !regexp.MustCompile(`(?m)^Boot path:\s+snapshot$`).MatchString(out) {
		t.Errorf("info of a VM from a snapshot: %q", out)
	}
	r = c.run("--json", "snapshot", "rm", "s1")
	if json.Unmarshal([]byte(r.stdout), &bad); r.code != 1 || bad.Kind != "in_use" || !strings.Contains(bad.Error, "c1") {
		t.Errorf("snapshot rm of a snapshot in use: exit %d, %s", r.code, r.stdout)
	}
	if out := c.ok("run", "--from-snapshot", "s1", "--", "uname", "-a"); !strings.HasPrefix(out, "Linux ") {
		t.Errorf("run --from-snapshot s1 -- uname -a: %q", out)
	}
	if out := c.ok("run", "--from-snapshot", "s1", "-e", "FOO=bar", "--", "sh", "-c", "echo $FOO"); out != "bar\n" {
		t.Errorf("run --from-snapshot -e FOO=bar: %q", out)
	}
	c.ok("delete", "c1")

	// fork: src and two new VMs.
	r = c.run("fork", "src", "-n", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "at least one") {
		t.Errorf("fork -n 0: exit %d, %s", r.code, r.stderr)
	}
	began = time.Now()
	var kids []smolvm.VMInfo
	c.json(&kids, "fork", "src", "-n", "2")
	t.Logf("fork -n 2: %s", time.Since(began).Round(time.Millisecond))
	if len(kids) != 2 || kids[0].ID == kids[1].ID {
		t.Fatalf("fork --json: %+v", kids)
	}
	for _, k := range kids {
		if k.ID == "src" || k.State != smolvm.StateRunning || k.FromSnapshot == "" || k.BootPath != "snapshot" {
			t.Errorf("forked VM: %+v", k)
		}
		if out := c.ok("exec", k.ID, "--", "sh", "-c", "cat /root/f; hostname"); out != "kept\n"+k.ID+"\n" {
			t.Errorf("forked VM %s: %q", k.ID, out)
		}
	}
	c.ok("delete", kids[0].ID, kids[1].ID)

	// pause --to-disk hibernates; resume brings the VM back as it was.
	// (Fresh values: JSON leaves out what is empty.)
	var hib, back smolvm.VMInfo
	c.json(&hib, "pause", "--to-disk", "src")
	if hib.State != smolvm.StateHibernated || hib.PID != 0 || hib.FromSnapshot != "" {
		t.Errorf("pause --to-disk: %+v", hib)
	}
	c.json(&back, "resume", "src")
	if back.State != smolvm.StateRunning {
		t.Errorf("resume after pause --to-disk: %+v", back)
	}
	if out := c.ok("exec", "src", "--", "cat", "/root/f"); out != "kept\n" {
		t.Errorf("after hibernation: %q", out)
	}

	var removed map[string][]string
	c.json(&removed, "snapshot", "rm", "s1", "d1")
	if !reflect.DeepEqual(removed["removed"], []string{"s1", "d1"}) {
		t.Errorf("snapshot rm --json: %v", removed)
	}
	// The fork's own snapshot went with its VMs.
	c.json(&snaps, "snapshot", "list")
	if len(snaps) != 0 {
		t.Errorf("snapshots left: %+v", snaps)
	}
	r = c.run("--json", "snapshot", "inspect", "s1")
	if json.Unmarshal([]byte(r.stdout), &bad); r.code != 1 || bad.Kind != "not_found" {
		t.Errorf("snapshot inspect after rm: exit %d, %s", r.code, r.stdout)
	}
	if ents, _ := os.ReadDir(filepath.Join(c.home, "snapshots")); len(ents) > 0 {
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("left in snapshots/: %s", e.Name())
			}
		}
	}
}
