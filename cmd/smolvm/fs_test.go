package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
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
