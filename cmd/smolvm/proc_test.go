package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestProcessCommands drives exec --argv/--detach, ps, attach, kill and
// wait on one VM, from this machine and through `smolvm serve`: each
// command is its own host process, so the background process outlives
// the one that started it.
func TestProcessCommands(t *testing.T) {
	bin := cliBinary(t)
	home := t.TempDir()
	local := cli{t: t, bin: bin, home: home}
	srv := startServer(t, bin, home)
	t.Cleanup(func() {
		if r := local.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		checkNoLeaks(t, home, nil)
	})
	remote := local
	remote.pre = []string{"--host", srv.unix}
	const vm = "pc1"
	local.ok("create", "--name", vm)

	for _, m := range []struct {
		name string
		c    cli
	}{{"local", local}, {"remote", remote}} {
		t.Run(m.name, func(t *testing.T) {
			c := m.c
			c.t = t
			if out := c.ok("exec", "--argv", "--cwd", "/tmp", "--user", "nobody", vm, "--", "sh", "-c", `pwd; id -un; printf '[%s]\n' "$1"`, "-", "a 'b' $(id)"); out != "/tmp\nnobody\n[a 'b' $(id)]\n" {
				t.Errorf("exec --argv = %q", out)
			}
			if out := c.ok("exec", "--cwd", "/tmp", vm, "--", "pwd"); out != "/tmp\n" {
				t.Errorf("exec --cwd (shell) = %q", out)
			}
			if r := c.run("--json", "exec", "--argv", vm, "--", "no-such-program"); r.code != 1 || !strings.Contains(r.stdout, `"not_found"`) || !strings.Contains(r.stdout, "no-such-program") {
				t.Errorf("missing program: exit %d, %s %s", r.code, r.stdout, r.stderr)
			}

			var started smolvm.ProcessInfo
			c.json(&started, "exec", "--detach", vm, "--", "sh", "-c", "trap 'echo bye; exit 3' TERM; echo hello; echo oops >&2; while :; do sleep 0.1; done")
			if started.ID == "" || started.PID <= 1 || !started.Running {
				t.Fatalf("exec --detach = %+v", started)
			}
			id := started.ID
			if out := c.ok("exec", "-d", "--argv", vm, "--", "true"); !strings.HasPrefix(out, "p") {
				t.Errorf("exec -d = %q, want a process id", out)
			}
			var list []smolvm.ProcessInfo
			c.json(&list, "ps", vm)
			if !procListed(list, id, true) {
				t.Fatalf("ps --json = %+v, want %s running", list, id)
			}
			if out := c.ok("ps", vm); !strings.Contains(out, id) || !strings.Contains(out, "running") {
				t.Errorf("ps = %q", out)
			}
			// Once it has written (and so set its trap): the earlier
			// output, stdout and stderr apart.
			for deadline := time.Now().Add(time.Minute); ; {
				c.json(&list, "ps", vm)
				if outputOf(list, id) >= int64(len("hello\noops\n")) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no output from %s: %+v", id, list)
				}
			}
			r := c.run("attach", "--no-follow", vm, id)
			if r.code != 0 || r.stdout != "hello\n" || r.stderr != "oops\n" {
				t.Errorf("attach --no-follow: exit %d, %q, %q", r.code, r.stdout, r.stderr)
			}
			c.ok("kill", vm, id)
			if r := c.run("wait", vm, id); r.code != 3 {
				t.Errorf("wait: exit %d (%s), want 3", r.code, r.stderr)
			}
			var res attachResult
			r = c.run("--json", "attach", vm, id)
			if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 3 || res.Stdout == nil || *res.Stdout != "hello\nbye\n" || res.Process.Exit == nil || res.Process.Exit.ExitCode != 3 {
				t.Errorf("attach --json after exit: exit %d, %+v, %v", r.code, res, err)
			}
			// A signal the process does not catch is how it ended.
			c.json(&started, "exec", "--detach", "--argv", vm, "--", "sleep", "1000")
			c.ok("kill", "--signal", "KILL", vm, started.ID)
			if r := c.run("attach", vm, started.ID); r.code != 128+9 {
				t.Errorf("attach after KILL: exit %d, want 137", r.code)
			}
			c.json(&list, "ps", vm)
			if !procListed(list, started.ID, false) {
				t.Errorf("ps after KILL = %+v", list)
			}
			for _, p := range list {
				if p.ID == started.ID && (p.Exit == nil || p.Exit.Signal != "KILL") {
					t.Errorf("ps: %+v, want signal KILL", p)
				}
			}
			if r := c.run("--json", "kill", vm, started.ID); r.code != 1 || !strings.Contains(r.stdout, "process_exited") {
				t.Errorf("kill after exit: exit %d, %s", r.code, r.stdout)
			}
			if r := c.run("--json", "attach", vm, "p424242"); r.code != 1 || !strings.Contains(r.stdout, "not_found") {
				t.Errorf("attach unknown: exit %d, %s", r.code, r.stdout)
			}
		})
	}
}

func outputOf(list []smolvm.ProcessInfo, id string) int64 {
	for _, p := range list {
		if p.ID == id {
			return p.OutputBytes
		}
	}
	return 0
}

func procListed(list []smolvm.ProcessInfo, id string, running bool) bool {
	for _, p := range list {
		if p.ID == id {
			return p.Running == running
		}
	}
	return false
}
