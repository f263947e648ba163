package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// syncBuffer is a bytes.Buffer one goroutine writes while another reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testServer is a `smolvm serve` of the built binary on a UNIX socket and
// loopback TCP.
type testServer struct {
	unix, tcp string // --host values
	token     string
}

// startServer runs `smolvm serve` for home until the test ends.
func startServer(t *testing.T, bin, home string) testServer {
	t.Helper()
	sock := filepath.Join(home, api.SocketFile)
	cmd := exec.Command(bin, "--json", "serve", "--socket", sock, "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+home, "SMOLVM_HOST=", "SMOLVM_TOKEN=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("smolvm serve did not exit on SIGTERM within 30 s\n%s", stderr.String())
		}
	})
	var s api.Serving
	decoded := make(chan error, 1)
	go func() { decoded <- json.NewDecoder(out).Decode(&s) }()
	select {
	case err := <-decoded:
		if err != nil {
			t.Fatalf("smolvm serve: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("smolvm serve printed nothing in 30 s\n%s", stderr.String())
	}
	go io.Copy(io.Discard, out)
	var ts testServer
	for _, u := range s.URLs {
		switch {
		case strings.HasPrefix(u, "unix://"):
			ts.unix = u
		case strings.HasPrefix(u, "tcp://"):
			ts.tcp = u
		}
	}
	tok, err := os.ReadFile(s.TokenFile)
	if ts.unix == "" || ts.tcp == "" || err != nil {
		t.Fatalf("smolvm serve: URLs %q, token file %q (%v)", s.URLs, s.TokenFile, err)
	}
	ts.token = strings.TrimSpace(string(tok))
	return ts
}

// ages are the table columns that depend on when a command ran.
var ages = regexp.MustCompile(`\b\d+[smhd] ago\b|just now`)

// TestRemoteMatchesLocal runs the same commands on this machine and
// through `smolvm serve` (UNIX socket; TCP with the token given as a flag
// and read from the server's token file) and wants the same output and
// exit codes.
func TestRemoteMatchesLocal(t *testing.T) {
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
	overUnix := local
	overUnix.pre = []string{"--host", srv.unix}
	overTCP := local
	overTCP.pre = []string{"--host", srv.tcp, "--token", srv.token}
	// The token from the server's token file (the home is local), the
	// server from the environment.
	overTCPFile := local
	overTCPFile.env = []string{"SMOLVM_HOST=" + srv.tcp}
	modes := []struct {
		name string
		c    cli
	}{{"unix", overUnix}, {"tcp", overTCP}, {"tcp-env", overTCPFile}}

	const vm = "rm1"
	var info smolvm.VMInfo
	overUnix.json(&info, "create", "--name", vm, "--env", "BOOT=yes")
	if info.ID != vm || info.State != smolvm.StateRunning {
		t.Fatalf("create over the socket: %+v", info)
	}

	big := make([]byte, 3<<20)
	rand.Read(big)
	sum := sha256.Sum256(big)

	tests := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		stdout string // "" = only the same as locally
		stderr bool   // stderr must be the same as locally too
	}{
		{"exec", []string{"exec", vm, "--", "sh", "-c", "echo out; echo err >&2"}, "", 0, "out\n", true},
		{"exit code", []string{"exec", vm, "--", "sh", "-c", "exit 7"}, "", 7, "", true},
		{"env", []string{"exec", "-e", "A=1", vm, "--", "sh", "-c", "echo $A-$BOOT"}, "", 0, "1-yes\n", true},
		{"json binary output", []string{"--json", "exec", vm, "--", "printf", `\377\376ok`}, "", 0, "", true},
		{"stdin", []string{"exec", "-i", vm, "--", "cat"}, "line one\nline two\n", 0, "line one\nline two\n", true},
		{"stdin streamed", []string{"exec", "-i", vm, "--", "sha256sum"}, string(big), 0, hex.EncodeToString(sum[:]) + "  -\n", true},
		{"stdin json", []string{"--json", "exec", "-i", vm, "--", "sh", "-c", "cat; exit 2"}, "abc", 2, "", true},
		{"timeout", []string{"exec", "--timeout", "1", vm, "--", "sleep", "30"}, "", 124, "", true},
		{"json timeout", []string{"--json", "exec", "--timeout", "1s", vm, "--", "sleep", "30"}, "", 124, "", true},
		{"info", []string{"info", vm}, "", 0, "", true},
		{"json info", []string{"--json", "info", vm}, "", 0, "", true},
		{"list", []string{"list"}, "", 0, "", true},
		{"json list", []string{"--json", "list"}, "", 0, "", true},
		{"env list", []string{"env", "list", vm}, "", 0, "BOOT=yes\n", true},
		{"json env list", []string{"--json", "env", "list", vm}, "", 0, "", true},
		{"port list", []string{"port", "list", vm}, "", 0, "", true},
		{"json snapshot list", []string{"--json", "snapshot", "list"}, "", 0, "", true},
		{"json image list", []string{"--json", "image", "list"}, "", 0, "", true},
		{"image inspect", []string{"image", "inspect", "alpine"}, "", 0, "", true},
		{"no such VM", []string{"info", "nope"}, "", 1, "", true},
		{"json no such VM", []string{"--json", "exec", "nope", "--", "true"}, "", 1, "", true},
		{"no such image", []string{"--json", "image", "inspect", "nope"}, "", 1, "", true},
		{"no such snapshot", []string{"snapshot", "inspect", "nope"}, "", 1, "", true},
		{"bad env name", []string{"env", "set", vm, "1A=x"}, "", 1, "", true},
		{"bad size", []string{"--json", "create", "--memory", "-1"}, "", 1, "", true},
		// The message depends on where the deadline hits: exit codes only.
		{"boot timeout", []string{"create", "--name", "bt", "--boot-timeout", "1ms"}, "", 124, "", false},
		{"after the boot timeout", []string{"info", "bt"}, "", 1, "", true},
		{"no such kept disk", []string{"delete", "--disk", "nope"}, "", 1, "", true},
		{"run", []string{"run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"}, "", 3, "out\n", true},
		{"run stdin", []string{"run", "-i", "--", "tr", "a-z", "A-Z"}, "piped\n", 0, "PIPED\n", true},
		{"fs write", []string{"fs", "write", vm, "/root/fsw/a.txt", "--mode", "0600"}, "hello\n", 0, "", true},
		{"fs cat", []string{"fs", "cat", vm, "/root/fsw/a.txt"}, "", 0, "hello\n", true},
		{"json fs cat", []string{"--json", "fs", "cat", vm, "/root/fsw/a.txt"}, "", 0, "", true},
		{"fs mkdir -p", []string{"fs", "mkdir", "-p", vm, "/root/fsw/d/e"}, "", 0, "", true},
		{"fs mkdir exists", []string{"--json", "fs", "mkdir", vm, "/root/fsw/d"}, "", 1, "", true},
		{"json fs ls", []string{"--json", "fs", "ls", vm, "/root/fsw"}, "", 0, "", true},
		{"fs ls", []string{"fs", "ls", vm, "/root/fsw/a.txt"}, "", 0, "", true},
		{"json fs stat", []string{"--json", "fs", "stat", vm, "/root/fsw/a.txt"}, "", 0, "", true},
		{"fs rm not empty", []string{"--json", "fs", "rm", vm, "/root/fsw/d"}, "", 1, "", true},
		{"fs rm missing", []string{"--json", "fs", "rm", vm, "/root/fsw/nope"}, "", 1, "", true},
		{"fs cat a directory", []string{"--json", "fs", "cat", vm, "/root/fsw"}, "", 1, "", true},
		{"update", []string{"update", vm, "--disk-bps", "10M"}, "", 0, "disk 10M/s\n", true},
		{"json update", []string{"--json", "update", vm, "--disk-iops", "500"}, "", 0, "", true},
		{"bad limit", []string{"update", vm, "--cpu-limit", "-1"}, "", 1, "", false},
		{"stats of no such VM", []string{"stats", "nope"}, "", 1, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lc := local
			lc.t, lc.in = t, tt.stdin
			want := lc.run(tt.args...)
			if want.code != tt.code || (tt.stdout != "" && want.stdout != tt.stdout) {
				t.Fatalf("locally: exit %d, stdout %q (stderr %q); want exit %d, stdout %q", want.code, want.stdout, want.stderr, tt.code, tt.stdout)
			}
			for _, m := range modes {
				c := m.c
				c.t, c.in = t, tt.stdin
				got := c.run(tt.args...)
				if got.code != want.code {
					t.Errorf("%s: exit %d, locally %d (stderr %q)", m.name, got.code, want.code, got.stderr)
				}
				if ages.ReplaceAllString(got.stdout, "AGE") != ages.ReplaceAllString(want.stdout, "AGE") {
					t.Errorf("%s: stdout\n%s\nlocally\n%s", m.name, got.stdout, want.stdout)
				}
				if tt.stderr && got.stderr != want.stderr {
					t.Errorf("%s: stderr\n%s\nlocally\n%s", m.name, got.stderr, want.stderr)
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	t.Run("fs watch", func(t *testing.T) { testFSWatch(t, vm, local, overUnix) })
	t.Run("cp -a", func(t *testing.T) { testCpArchive(t, vm, local, overUnix) })

	t.Run("stats", func(t *testing.T) {
		for _, m := range modes {
			c := m.c
			c.t = t
			var ms []smolvm.Metrics
			c.json(&ms, "stats", vm)
			if len(ms) != 1 || ms[0].ID != vm || ms[0].CPU.TimeNS <= 0 || ms[0].Memory.RSS <= 0 || ms[0].Disk.ReadBytes <= 0 || ms[0].Limits.DiskBPS != 10_000_000 {
				t.Errorf("%s: stats --json: %+v", m.name, ms)
			}
		}
	})

	t.Run("doctor", func(t *testing.T) {
		var l, r doctorReport
		lc, rc := local, overUnix
		lc.t, rc.t = t, t
		lc.json(&l, "doctor")
		rc.json(&r, "doctor")
		if !reflect.DeepEqual(l.Checks, r.Checks) || r.Leftovers != nil || r.Server != srv.unix {
			t.Errorf("doctor through the server: %+v\nlocally: %+v", r, l)
		}
		if res := rc.run("doctor", "--fix"); res.code != 1 || !strings.Contains(res.stderr, "not through a server") {
			t.Errorf("doctor --fix through a server: exit %d, %q", res.code, res.stderr)
		}
	})

	t.Run("cp", func(t *testing.T) {
		c, lc, tc := overUnix, local, overTCP
		c.t, lc.t, tc.t = t, t, t
		src := filepath.Join(t.TempDir(), "tree")
		writeTree(t, src)
		dst := t.TempDir()
		// Down through the server what was copied up locally, and the
		// other way round: each direction checked against the SDK's.
		lc.ok("cp", src, vm+":/root/up-local")
		tc.ok("cp", vm+":/root/up-local", filepath.Join(dst, "down-remote"))
		sameTree(t, src, filepath.Join(dst, "down-remote"))
		c.ok("cp", src, vm+":/root/")
		if out := c.ok("exec", vm, "--", "sh", "-c", "cd /root/tree && ls -l bin/run | cut -c1-10 && cat sub/deep/f"); out != "-rwxr-x---\ndeep\n" {
			t.Errorf("the tree in the guest: %q", out)
		}
		lc.ok("cp", vm+":/root/tree", filepath.Join(dst, "up-remote"))
		sameTree(t, src, filepath.Join(dst, "up-remote"))
		// Into an existing directory, under its own name, as cp -r does;
		// again, merging into the copy there.
		tc.ok("cp", vm+":/root/tree", dst)
		sameTree(t, src, filepath.Join(dst, "tree"))
		os.WriteFile(filepath.Join(dst, "tree", "mine"), []byte("kept"), 0o600)
		tc.ok("cp", vm+":/root/tree", dst)
		if b, err := os.ReadFile(filepath.Join(dst, "tree", "mine")); err != nil || string(b) != "kept" {
			t.Errorf("a merging download lost a file of the host's: %q, %v", b, err)
		}
		os.Remove(filepath.Join(dst, "tree", "mine"))
		sameTree(t, src, filepath.Join(dst, "tree"))
		c.ok("exec", vm, "--", "touch", "/root/tree/guest-only")
		c.ok("cp", src, vm+":/root/")
		if out := c.ok("exec", vm, "--", "ls", "/root/tree"); !strings.Contains(out, "guest-only") || !strings.Contains(out, "big") {
			t.Errorf("a merging upload: /root/tree holds %q", out)
		}
		// One file, both ways, under a new name.
		c.ok("cp", filepath.Join(src, "big"), vm+":/tmp/big.copy")
		c.ok("cp", vm+":/tmp/big.copy", filepath.Join(dst, "big"))
		sameFile(t, filepath.Join(src, "big"), filepath.Join(dst, "big"))
		for _, args := range [][]string{{"cp", vm + ":/nope", dst}, {"cp", filepath.Join(src, "nope"), vm + ":/tmp/"}} {
			l, r := lc.run(args...), c.run(args...)
			if l.code != 1 || r.code != 1 || !strings.Contains(r.stderr, "nope") {
				t.Errorf("%q: exit %d, %q; locally exit %d, %q", args, r.code, r.stderr, l.code, l.stderr)
			}
		}
	})

	t.Run("policy", func(t *testing.T) {
		c := overUnix
		c.t = t
		checkPolicyCLI(t, c, vm)
	})

	t.Run("lifecycle", func(t *testing.T) {
		c, lc := overUnix, local
		c.t, lc.t = t, t
		c.ok("env", "set", vm, "FOO=bar baz")
		if out := lc.ok("env", "list", vm); out != "BOOT=yes\nFOO=bar baz\n" {
			t.Errorf("env set through the server, listed locally: %q", out)
		}
		spec := strings.TrimSpace(c.ok("port", "expose", vm, "80"))
		if !strings.HasPrefix(spec, "127.0.0.1:") || !strings.HasSuffix(spec, ":80") {
			t.Errorf("port expose: %q", spec)
		}
		if out := lc.ok("port", "list", vm); !strings.Contains(out, strings.TrimSuffix(spec, ":80")) {
			t.Errorf("port expose through the server, listed locally: %q", out)
		}
		c.ok("port", "close", vm, spec)
		for _, step := range []struct {
			args  []string
			state smolvm.VMState
		}{
			{[]string{"pause", vm}, smolvm.StatePaused},
			{[]string{"resume", vm}, smolvm.StateRunning},
			{[]string{"stop", vm}, smolvm.StateStopped},
			{[]string{"start", vm}, smolvm.StateRunning},
		} {
			if out := c.ok(step.args...); out != vm+"\n" {
				t.Errorf("%q: %q", step.args, out)
			}
			var info smolvm.VMInfo
			lc.json(&info, "info", vm)
			if info.State != step.state {
				t.Errorf("after %q: state %s, want %s", step.args, info.State, step.state)
			}
		}
		if out := c.ok("exec", vm, "--", "sh", "-c", "echo $FOO"); out != "bar baz\n" {
			t.Errorf("env after a restart through the server: %q", out)
		}
		if out := c.ok("logs", vm); !strings.Contains(out, "smolvm-agent") {
			t.Errorf("logs: no agent line in %q", out)
		}
		// logs -f goes on until the VM stops.
		f := exec.Command(bin, "--host", srv.unix, "--json", "logs", "-f", vm)
		f.Env = append(os.Environ(), "SMOLVM_HOME="+home)
		stdout, err := f.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		// Stopped once logs -f streams, not after a sleep: under load the
		// CLI may take longer than any fixed pause to connect.
		var followed bytes.Buffer
		streaming, copied := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(copied)
			br := bufio.NewReader(stdout)
			line, err := br.ReadString('\n')
			followed.WriteString(line)
			close(streaming)
			if err == nil {
				_, _ = followed.ReadFrom(br)
			}
		}()
		done := make(chan error, 1)
		go func() { <-copied; done <- f.Wait() }()
		select {
		case <-streaming:
		case <-time.After(30 * time.Second):
		}
		c.ok("stop", vm)
		select {
		case err := <-done:
			if err != nil || !strings.Contains(followed.String(), `{"line":`) {
				t.Errorf("logs -f: %v, output %.200q", err, followed.String())
			}
		case <-time.After(30 * time.Second):
			f.Process.Kill()
			<-done
			t.Errorf("logs -f did not end when the VM stopped")
		}
		c.ok("start", vm)
	})

	t.Run("interrupt", func(t *testing.T) {
		lc := local
		lc.t = t
		x := exec.Command(bin, "--host", srv.tcp, "--token", srv.token, "exec", vm, "--", "sleep", "301")
		x.Env = append(os.Environ(), "SMOLVM_HOME="+home)
		if err := x.Start(); err != nil {
			t.Fatal(err)
		}
		running := func() bool {
			return strings.Contains(lc.ok("exec", vm, "--", "ps", "-o", "args"), "sleep 301")
		}
		deadline := time.Now().Add(20 * time.Second)
		for !running() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		x.Process.Signal(os.Interrupt)
		err := x.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
			t.Errorf("Ctrl-C of exec through the server: %v, want exit 130", err)
		}
		deadline = time.Now().Add(10 * time.Second)
		for running() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if running() {
			t.Errorf("the command still runs in the guest after Ctrl-C")
		}
	})

	t.Run("image", func(t *testing.T) {
		c, lc := overUnix, local
		c.t, lc.t = t, t
		out := c.ok("image", "build", "--from", "alpine", "-t", "rb", "--size", "300")
		if !strings.HasPrefix(out, "image rb: alpine") || !strings.Contains(out, "smolvm run --image rb") {
			t.Errorf("image build through the server: %q", out)
		}
		if l, r := lc.ok("image", "inspect", "rb"), c.ok("image", "inspect", "rb"); l != r {
			t.Errorf("image inspect through the server:\n%s\nlocally:\n%s", r, l)
		}
		if out := c.ok("image", "rm", "rb"); out != "rb\n" {
			t.Errorf("image rm: %q", out)
		}
		if r := lc.run("image", "inspect", "rb"); r.code != 1 {
			t.Errorf("image rm through the server left the image")
		}
		if r := c.run("image", "build", "--from", "nosuch:thing", "-t", "bad"); r.code != 1 || r.stderr == "" {
			t.Errorf("a bad image source: exit %d, %q", r.code, r.stderr)
		}
	})

	t.Run("snapshot and fork", func(t *testing.T) {
		c, lc := overUnix, local
		c.t, lc.t = t, t
		c.ok("snapshot", "create", vm, "rs")
		if l, r := lc.ok("snapshot", "inspect", "rs"), c.ok("snapshot", "inspect", "rs"); l != r {
			t.Errorf("snapshot inspect through the server:\n%s\nlocally:\n%s", r, l)
		}
		kid := strings.TrimSpace(c.ok("fork", vm, "-n", "1"))
		if out := lc.ok("exec", kid, "--", "sh", "-c", "echo $FOO"); out != "bar baz\n" {
			t.Errorf("fork's child: %q", out)
		}
		var made smolvm.VMInfo
		c.json(&made, "create", "--from-snapshot", "rs", "--name", "rs-kid")
		if made.ID != "rs-kid" || made.State != smolvm.StateRunning || made.FromSnapshot != "rs" {
			t.Errorf("create --from-snapshot through the server: %+v", made)
		}
		c.ok("delete", kid, "rs-kid")
		if r := c.run("--json", "snapshot", "rm", "rs"); r.code != 0 {
			t.Errorf("snapshot rm: exit %d, %s %s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("shell", func(t *testing.T) {
		c := overUnix
		c.t, c.in = t, "echo shell-$((6*7))\nexit 5\n"
		r := c.run("ssh", vm)
		if r.code != 5 || !strings.Contains(r.stdout, "shell-42") {
			t.Errorf("ssh through the server: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		c.in = ""
		for _, args := range [][]string{{"ssh", "--print", vm}} {
			if r := c.run(args...); r.code != 1 || !strings.Contains(r.stderr, "not through a server") {
				t.Errorf("%q through a server: exit %d, %q", args, r.code, r.stderr)
			}
		}
	})

	t.Run("kept disk", func(t *testing.T) {
		c := overUnix
		c.t = t
		c.ok("create", "--name", "kd", "--retain-disk", "--no-start")
		c.ok("delete", "kd")
		disk := filepath.Join(home, "vms", "kd", "disk.ext4")
		if _, err := os.Stat(disk); err != nil {
			t.Fatalf("the deleted VM's disk was not kept: %v", err)
		}
		c.ok("delete", "--disk", "kd")
		if _, err := os.Stat(disk); !os.IsNotExist(err) {
			t.Fatalf("delete --disk through the server left %s: %v", disk, err)
		}
		if r := c.run("delete", "--disk", "kd"); r.code != 1 {
			t.Errorf("a second delete --disk: exit %d, %q", r.code, r.stderr)
		}
	})

	t.Run("terminal", func(t *testing.T) {
		// A real terminal: raw mode, the size at the start, a resize.
		sh := exec.Command(bin, "--host", srv.unix, "ssh", vm)
		sh.Env = append(os.Environ(), "SMOLVM_HOME="+home, "TERM=xterm")
		tty, err := pty.StartWithSize(sh, &pty.Winsize{Rows: 30, Cols: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		var screen syncBuffer
		go io.Copy(&screen, tty)
		waitFor := func(what string) {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(screen.String(), what) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q on the terminal in 20 s:\n%s", what, screen.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		io.WriteString(tty, "echo size=$(stty size)=\r")
		waitFor("size=30 100=")
		if err := pty.Setsize(tty, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		sh.Process.Signal(syscall.SIGWINCH)
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(screen.String(), "size=40 120=") && time.Now().Before(deadline) {
			io.WriteString(tty, "echo size=$(stty size)=\r")
			time.Sleep(300 * time.Millisecond)
		}
		waitFor("size=40 120=")
		io.WriteString(tty, "exit 4\r")
		done := make(chan error, 1)
		go func() { done <- sh.Wait() }()
		select {
		case err := <-done:
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 {
				t.Errorf("ssh on a terminal: %v, want exit 4", err)
			}
		case <-time.After(20 * time.Second):
			sh.Process.Kill()
			<-done
			t.Errorf("ssh did not end after exit")
		}
	})

	t.Run("create with ports", func(t *testing.T) {
		c, lc := overTCP, local
		c.t, lc.t = t, t
		if out := c.ok("create", "--no-start", "--name", "rp", "-p", "80"); out != "rp\n" {
			t.Errorf("create -p through the server: %q", out)
		}
		var fs []smolvm.PortForward
		lc.json(&fs, "port", "list", "rp")
		var info smolvm.VMInfo
		lc.json(&info, "info", "rp")
		if len(fs) != 1 || fs[0].GuestPort != 80 || fs[0].HostPort == 0 || info.State != smolvm.StateCreated {
			t.Errorf("create --no-start -p 80 through the server: forwards %+v, state %s", fs, info.State)
		}
		// From another state directory: only the server knows these VMs.
		elsewhere := c
		elsewhere.home = t.TempDir()
		if out := elsewhere.ok("__complete", "exec", ""); !strings.Contains(out, "rp\tcreated") || !strings.Contains(out, vm+"\trunning") {
			t.Errorf("completion through the server: %q", out)
		}
		c.ok("delete", "rp")
	})

	t.Run("refused", func(t *testing.T) {
		lc := local
		lc.t = t
		bad := local
		bad.t, bad.pre = t, []string{"--host", srv.tcp, "--token", "wrong"}
		var e jsonError
		r := bad.run("--json", "create", "--name", "evil")
		if json.Unmarshal([]byte(r.stdout), &e); r.code != 1 || e.Kind != "unauthorized" || !strings.Contains(e.Error, "--token") {
			t.Errorf("a wrong token: exit %d, %q", r.code, r.stdout)
		}
		if r := lc.run("info", "evil"); r.code != 1 {
			t.Errorf("a refused create made a VM: %s", r.stdout)
		}
		gone := local
		gone.t, gone.pre = t, []string{"--host", "unix://" + filepath.Join(t.TempDir(), "none.sock")}
		r = gone.run("list")
		if r.code != 1 || !strings.Contains(r.stderr, "no smolvm server at") || !strings.Contains(r.stderr, "smolvm serve") {
			t.Errorf("an unreachable server: exit %d, %q", r.code, r.stderr)
		}
		r = gone.run("--host", "http://localhost:1", "list")
		if r.code != 1 || !strings.Contains(r.stderr, "unix:///") {
			t.Errorf("a bad --host: exit %d, %q", r.code, r.stderr)
		}
	})
}

func TestSameMachine(t *testing.T) {
	for host, want := range map[string]bool{
		"unix:///run/smolvm.sock":  true,
		"tcp://127.0.0.1:7070":     true,
		"tcp://127.9.9.9:7070":     true,
		"tcp://[::1]:7070":         true,
		"tcp://localhost:7070":     true,
		"tcp://10.0.0.5:7070":      false,
		"tcp://example.com:7070":   false,
		"tcp://127.0.0.1.nip.io:1": false,
	} {
		g := &globalOptions{host: host}
		if got := g.sameMachine(); got != want {
			t.Errorf("sameMachine(%s) = %v, want %v", host, got, want)
		}
	}
}

// TestServeIgnoresHost: SMOLVM_HOST is for clients; a server started
// with it set serves its own state directory instead of failing.
func TestServeIgnoresHost(t *testing.T) {
	bin := cliBinary(t)
	home := t.TempDir()
	cmd := exec.Command(bin, "serve", "--socket", filepath.Join(home, "s.sock"))
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+home, "SMOLVM_HOST=unix:///nonexistent/smolvm.sock")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	line := make([]byte, 200)
	n, _ := out.Read(line)
	if !strings.Contains(string(line[:n]), "listening on unix://"+home) {
		t.Fatalf("serve with SMOLVM_HOST set: %q", line[:n])
	}
	c := cli{t: t, bin: bin, home: home, pre: []string{"--host", "unix://" + filepath.Join(home, "s.sock")}}
	if r := c.run("--json", "list"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("list through it: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
}

// writeTree makes a small tree: a big random file, an executable, a
// relative symlink and nested directories.
func writeTree(t *testing.T, dir string) {
	t.Helper()
	big := make([]byte, 700<<10)
	rand.Read(big)
	for name, body := range map[string][]byte{"big": big, "bin/run": []byte("#!/bin/sh\necho run\n"), "sub/deep/f": []byte("deep\n"), "empty": nil} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "bin/run"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep/f", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
}

// sameTree fails unless got holds what want does: names, kinds, modes,
// symlink targets, contents.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	type entry struct {
		mode fs.FileMode
		data string
	}
	read := func(root string) map[string]entry {
		m := map[string]entry{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			info, err := d.Info()
			if err != nil {
				return err
			}
			e := entry{mode: info.Mode()}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				e.data, err = os.Readlink(p)
			case d.Type().IsRegular():
				var b []byte
				b, err = os.ReadFile(p)
				s := sha256.Sum256(b)
				e.data = hex.EncodeToString(s[:])
			}
			if rel != "." {
				m[rel] = e
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if w, g := read(want), read(got); !reflect.DeepEqual(w, g) {
		t.Errorf("copied tree %s differs from %s:\ngot  %v\nwant %v", got, want, g, w)
	}
}

func sameFile(t *testing.T, want, got string) {
	t.Helper()
	a, err1 := os.ReadFile(want)
	b, err2 := os.ReadFile(got)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("%s differs from %s (%v, %v)", got, want, err1, err2)
	}
}
