package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCpREADME runs the README's cp example through the built binary, in a
// working directory of its own: a tree into a new guest path, a guest file
// into ".", and both again into directories that exist.
func TestCpREADME(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir()}
	t.Cleanup(func() {
		if r := c.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		checkNoLeaks(t, c.home, []string{"web"})
	})
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, "app", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "app", "bin", "run"), []byte("#!/bin/sh\necho app ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cp := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.bin, append([]string{"cp"}, args...)...)
		cmd.Dir, cmd.Env = work, append(os.Environ(), "SMOLVM_HOME="+c.home)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("smolvm cp %q: %v\n%s", args, err, stderr.String())
		}
	}

	c.ok("--network", "user", "create", "--name", "web") // about files, not the firewall
	c.ok("exec", "web", "--", "sh", "-c", "echo started > /var/log/app.log")
	cp("./app", "web:/opt/app")
	cp("web:/var/log/app.log", ".")
	if out := c.ok("exec", "web", "--", "/opt/app/bin/run"); out != "app ran\n" {
		t.Errorf("/opt/app/bin/run: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(work, "app.log")); err != nil || string(b) != "started\n" {
		t.Errorf("./app.log: %q, %v", b, err)
	}

	// Into directories that exist, as cp puts them.
	cp("./app", "web:/opt/app")
	cp("web:/var/log/app.log", "app/")
	cp("web:/opt/app", "app")
	if out := c.ok("exec", "web", "--", "/opt/app/app/bin/run"); out != "app ran\n" {
		t.Errorf("/opt/app/app/bin/run: %q", out)
	}
	for _, name := range []string{"app/app.log", "app/app/bin/run", "app/app/app/bin/run"} {
		if _, err := os.Stat(filepath.Join(work, name)); err != nil {
			t.Error(err)
		}
	}
}
