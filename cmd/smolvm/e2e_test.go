package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// cliBinary builds the smolvm binary (static: it is also the guest's
// agent) into a temp dir, or skips the test where VMs cannot run.
func cliBinary(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("VM test skipped: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
	}
	if os.Getenv("SMOLVM_ALPINE_SOURCE") == "" {
		t.Skip("VM test skipped: SMOLVM_ALPINE_SOURCE is unset; point it at a local Alpine minirootfs (such as /work/shared/alpine)")
	}
	bin := filepath.Join(t.TempDir(), "smolvm")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cli runs the built binary against one state directory.
type cli struct {
	t    *testing.T
	bin  string
	home string
	pre  []string // arguments before the command's, such as --host
	env  []string // more environment
	in   string   // standard input
}

type result struct {
	stdout, stderr string
	code           int
}

func (c cli) run(args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append(c.pre[:len(c.pre):len(c.pre)], args...)...)
	// A server the tester's shell names must not take the local runs.
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+c.home, "SMOLVM_HOST=", "SMOLVM_TOKEN=")
	cmd.Env = append(cmd.Env, c.env...)
	if c.in != "" {
		cmd.Stdin = strings.NewReader(c.in)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		c.t.Fatalf("smolvm %q: %v", args, err)
	}
	return r
}

// ok runs the CLI and fails the test unless it exits 0.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("smolvm %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (c cli) json(v any, args ...string) {
	c.t.Helper()
	out := c.ok(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("smolvm --json %q: %v\n%s", args, err, out)
	}
}

// TestEndToEnd drives the built binary through run and a VM's whole
// life: three boots, one after another.
func TestEndToEnd(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir()}
	var ids []string
	t.Cleanup(func() {
		if r := c.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		checkNoLeaks(t, c.home, ids)
	})

	t.Run("run", func(t *testing.T) {
		c := c
		c.t = t
		r := c.run("--json", "run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		var got execResult
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("run --json: %v\nstdout: %s\nstderr: %s", err, r.stdout, r.stderr)
		}
		ids = append(ids, got.ID)
		if r.code != 3 || got.ExitCode != 3 || got.Stdout == nil || *got.Stdout != "out\n" || got.Stderr == nil || *got.Stderr != "err\n" || got.ID == "" {
			t.Errorf("run --json: exit %d, %+v; want exit 3, stdout out, stderr err", r.code, got)
		}
		var vms []smolvm.VMInfo
		c.json(&vms, "list")
		if len(vms) != 0 {
			t.Errorf("run left VMs behind: %+v", vms)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("lifecycle", func(t *testing.T) {
		c := c
		c.t = t
		const id = "e2e"
		ids = append(ids, id)
		defer func() {
			if t.Failed() {
				if b, err := os.ReadFile(filepath.Join(c.home, "vms", id, "console.log")); err == nil {
					t.Logf("console of %s:\n%s", id, b)
				}
			}
		}()
		var info smolvm.VMInfo
		c.json(&info, "create", "--name", id, "--env", "BOOT=yes")
		if info.ID != id || info.State != smolvm.StateRunning {
			t.Fatalf("create: %+v", info)
		}
		if out := c.ok("exec", id, "--", "sh", "-c", "echo $BOOT $0"); out != "yes sh\n" {
			t.Errorf("exec: %q", out)
		}
		if r := c.run("exec", id, "--", "sh", "-c", "exit 7"); r.code != 7 {
			t.Errorf("exec exit 7: got exit %d (%s)", r.code, r.stderr)
		}
		var timeout jsonError
		r := c.run("--json", "exec", "--timeout", "1s", id, "--", "sleep", "30")
		if err := json.Unmarshal([]byte(r.stdout), &timeout); err != nil || r.code != 124 || timeout.Kind != "timeout" {
			t.Errorf("exec --timeout: exit %d, %q", r.code, r.stdout)
		}
		c.ok("env", "set", id, "FOO=bar baz", "N=1")
		var env map[string]string
		c.json(&env, "env", "list", id)
		if want := map[string]string{"BOOT": "yes", "FOO": "bar baz", "N": "1"}; !reflect.DeepEqual(env, want) {
			t.Errorf("env list: %v, want %v", env, want)
		}
		c.ok("env", "unset", id, "N")
		var samples []smolvm.Metrics
		c.json(&samples, "stats", id)
		if len(samples) != 1 || samples[0].ID != id || samples[0].CPU.TimeNS <= 0 || samples[0].Memory.RSS <= 0 || samples[0].Guest == nil {
			t.Errorf("stats --json %s: %+v", id, samples)
		}
		c.json(&samples, "stats")
		if len(samples) != 1 || samples[0].ID != id {
			t.Errorf("stats --json (all running VMs): %+v", samples)
		}
		var lim smolvm.Limits
		c.json(&lim, "update", id, "--disk-bps", "10M")
		if c.json(&info, "info", id); lim.DiskBPS != 10_000_000 || info.Config.Limits != lim {
			t.Errorf("update --disk-bps 10M: %+v, info %+v", lim, info.Config.Limits)
		}
		checkPolicyCLI(t, c, id)
		if out := c.ok("ssh", id, "--print"); !strings.Contains(out, filepath.Join(c.home, "vms", id, "id_ed25519")) || !strings.Contains(out, "root@") {
			t.Errorf("ssh --print: %q", out)
		}

		c.json(&info, "stop", id)
		if info.State != smolvm.StateStopped {
			t.Errorf("after stop: state %s", info.State)
		}
		var notRunning jsonError
		r = c.run("--json", "exec", id, "--", "true")
		if json.Unmarshal([]byte(r.stdout), &notRunning); r.code != 1 || notRunning.Kind != "not_running" {
			t.Errorf("exec on a stopped VM: exit %d, %q", r.code, r.stdout)
		}
		c.json(&info, "start", id)
		if info.State != smolvm.StateRunning {
			t.Errorf("after start: state %s", info.State)
		}
		if out := c.ok("exec", id, "--", "sh", "-c", "echo $FOO/$N/$BOOT"); out != "bar baz//yes\n" {
			t.Errorf("env after restart: %q", out)
		}
		if out := c.ok("logs", id); !strings.Contains(out, "smolvm-agent") {
			t.Errorf("logs: no agent line in %q", out)
		}
		if out := c.ok("list"); !strings.Contains(out, id+" ") || !strings.Contains(out, "running") {
			t.Errorf("list: %q", out)
		}

		c.ok("delete", id)
		var vms []smolvm.VMInfo
		c.json(&vms, "list")
		if len(vms) != 0 {
			t.Errorf("list after delete: %+v", vms)
		}
	})
}

// checkNoLeaks fails the test if a QEMU process of home or a TAP device
// of the VMs ids is still there.
func checkNoLeaks(t *testing.T, home string, ids []string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte("qemu")) && usesDir(filepath.Base(filepath.Dir(p)), home) {
			t.Errorf("QEMU process %s left running", filepath.Base(filepath.Dir(p)))
		}
	}
	for name, alias := range network.TAPAliases() {
		if strings.HasPrefix(alias, network.AliasPrefix+home) {
			t.Errorf("TAP device %s (%s) left behind", name, alias)
		}
	}
}

// usesDir reports whether process pid has a file under dir open (QEMU is
// handed its files as descriptors; its command line does not name them).
func usesDir(pid, dir string) bool {
	n, _ := strconv.Atoi(pid)
	for _, f := range hypervisor.OpenFiles(n) {
		if strings.HasPrefix(f, dir) {
			return true
		}
	}
	return false
}
