package main

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/smolvm/smolvm"
)

// TestStickyEnvDiskAndBinaryOutput boots one VM from an image built
// bigger than the default disk and checks, through the built binary:
// the disk keeps the image's size when --disk is not given; --json exec
// carries binary output byte for byte; a port forward closes with the
// spec port expose printed; and env set/unset of variables given at
// create survive a stop and start.
func TestStickyEnvDiskAndBinaryOutput(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir()}
	const id = "sticky"
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(c.home, "vms", id, "console.log")); err == nil {
				t.Logf("console of %s:\n%s", id, b)
			}
		}
		if r := c.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		checkNoLeaks(t, c.home, []string{id})
	})

	c.ok("image", "build", "--from", "alpine", "--mirror", os.Getenv("SMOLVM_ALPINE_SOURCE"), "-t", "big", "--size", "700")
	var info smolvm.VMInfo
	c.json(&info, "create", "--name", id, "--image", "big", "-e", "A=1", "-e", "B=2", "-e", "C=3")
	if info.State != smolvm.StateRunning {
		t.Fatalf("create: %+v", info)
	}

	t.Run("disk keeps the image's size", func(t *testing.T) {
		c := c
		c.t = t
		if info.Config.DiskMiB != 700 {
			t.Errorf("config disk %d MiB, want the image's 700", info.Config.DiskMiB)
		}
		// /sys/block/vda/size counts 512-byte sectors.
		if out := strings.TrimSpace(c.ok("exec", id, "--", "cat", "/sys/block/vda/size")); out != "1433600" {
			t.Errorf("guest disk is %s sectors, want 1433600 (700 MiB)", out)
		}
	})

	t.Run("json exec keeps binary output", func(t *testing.T) {
		c := c
		c.t = t
		c.ok("exec", id, "--", "sh", "-c", "head -c 256 /dev/urandom > /tmp/r; printf 'caf\\351\\377' > /tmp/e")
		hexOf := func(path string) []byte {
			out := c.ok("exec", id, "--", "od", "-An", "-tx1", "-v", path)
			b, err := hex.DecodeString(strings.Join(strings.Fields(out), ""))
			if err != nil {
				t.Fatalf("od %s: %v\n%s", path, err, out)
			}
			return b
		}
		random, invalid := hexOf("/tmp/r"), hexOf("/tmp/e")
		if len(random) != 256 {
			t.Fatalf("/tmp/r has %d bytes", len(random))
		}
		if raw := c.ok("exec", id, "--", "cat", "/tmp/r"); raw != string(random) {
			t.Errorf("plain exec changed the bytes")
		}
		var res execResult
		c.json(&res, "exec", id, "--", "sh", "-c", "cat /tmp/r; cat /tmp/e >&2")
		gotOut, err1 := decodeOutput(res.Stdout, res.StdoutB64)
		gotErr, err2 := decodeOutput(res.Stderr, res.StderrB64)
		if err1 != nil || err2 != nil || !bytes.Equal(gotOut, random) || !bytes.Equal(gotErr, invalid) {
			t.Errorf("--json exec: stdout %x (%v), stderr %x (%v); want %x and %x", gotOut, err1, gotErr, err2, random, invalid)
		}
		var text execResult
		c.json(&text, "exec", id, "--", "echo", "plain")
		if text.Stdout == nil || *text.Stdout != "plain\n" || text.StdoutB64 != "" {
			t.Errorf("--json exec of text: %+v", text)
		}
	})

	t.Run("port close takes what expose printed", func(t *testing.T) {
		c := c
		c.t = t
		spec := strings.TrimSpace(c.ok("port", "expose", id, "80"))
		if _, err := parsePort(spec); err != nil || !strings.HasPrefix(spec, "127.0.0.1:") {
			t.Fatalf("port expose printed %q", spec)
		}
		c.ok("port", "close", id, spec)
		var fs []smolvm.PortForward
		c.json(&fs, "port", "list", id)
		if len(fs) != 0 {
			t.Errorf("forwards after close: %+v", fs)
		}
	})

	t.Run("env set and unset stick across restarts", func(t *testing.T) {
		c := c
		c.t = t
		c.ok("env", "set", id, "A=2", "D=4")
		c.ok("env", "unset", id, "B")
		show := "echo A=$A B=${B-unset} C=$C D=$D"
		const want = "A=2 B=unset C=3 D=4\n"
		if out := c.ok("exec", id, "--", "sh", "-c", show); out != want {
			t.Errorf("before restart: %q, want %q", out, want)
		}
		c.ok("stop", id)
		c.ok("start", id)
		if out := c.ok("exec", id, "--", "sh", "-c", show); out != want {
			t.Errorf("after restart: %q, want %q", out, want)
		}
		var env map[string]string
		c.json(&env, "env", "list", id)
		if wantEnv := map[string]string{"A": "2", "C": "3", "D": "4"}; !reflect.DeepEqual(env, wantEnv) {
			t.Errorf("env list after restart: %v, want %v", env, wantEnv)
		}
		var after smolvm.VMInfo
		c.json(&after, "info", id)
		if wantEnv := map[string]string{"A": "2", "C": "3", "D": "4"}; !reflect.DeepEqual(after.Config.Env, wantEnv) {
			t.Errorf("stored env: %v, want %v", after.Config.Env, wantEnv)
		}
	})
}
