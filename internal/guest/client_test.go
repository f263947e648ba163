package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/agent"
	"github.com/smolvm/smolvm/internal/guest"
)

// testGuest is an agent.Server running in the test process on loopback.
type testGuest struct {
	addr      string
	hostKey   ssh.Signer
	clientKey ssh.Signer
	dir       string // EnvFile, ProfileFile and HomeDir live here
	poweroffs atomic.Int32
}

func (g *testGuest) envFile() string     { return filepath.Join(g.dir, "etc", "env.json") }
func (g *testGuest) profileFile() string { return filepath.Join(g.dir, "profile.d", "smolvm_env.sh") }
func (g *testGuest) home() string        { return filepath.Join(g.dir, "root") }

func newKey(t testing.TB) ssh.Signer {
	t.Helper()
	k, _, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startGuest serves on a fresh loopback port until the test ends.
func startGuest(t testing.TB) *testGuest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &testGuest{addr: ln.Addr().String(), hostKey: newKey(t), clientKey: newKey(t), dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(g.dir, "profile.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	serveOn(t, g, ln)
	return g
}

func serveOn(t testing.TB, g *testGuest, ln net.Listener) {
	t.Helper()
	srv, err := agent.NewServer(agent.ServerConfig{
		HostKey:        g.hostKey,
		AuthorizedKeys: []ssh.PublicKey{g.clientKey.PublicKey()},
		EnvFile:        g.envFile(),
		ProfileFile:    g.profileFile(),
		Shell:          "/bin/sh",
		HomeDir:        g.home(),
		Poweroff:       func() { g.poweroffs.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func dial(t testing.TB, g *testGuest) *guest.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestExec(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	big := strings.Repeat("x", 1<<20)

	tests := []struct {
		name       string
		req        guest.ExecRequest
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "exit 0", req: guest.ExecRequest{Command: "true"}, wantCode: 0},
		{name: "exit 3", req: guest.ExecRequest{Command: "exit 3"}, wantCode: 3},
		{name: "exit 255", req: guest.ExecRequest{Command: "exit 255"}, wantCode: 255},
		{name: "killed by signal", req: guest.ExecRequest{Command: "kill -TERM $$"}, wantCode: 128 + 15},
		{
			name:       "stderr kept apart",
			req:        guest.ExecRequest{Command: "echo out; echo err >&2; echo out2"},
			wantStdout: "out\nout2\n",
			wantStderr: "err\n",
		},
		{
			name:       "stdin piped and closed at EOF",
			req:        guest.ExecRequest{Command: "cat; echo done", Stdin: strings.NewReader("hello\n")},
			wantStdout: "hello\ndone\n",
		},
		{
			name:       "large stdin round trip",
			req:        guest.ExecRequest{Command: "cat", Stdin: strings.NewReader(big)},
			wantStdout: big,
		},
		{
			name:       "no stdin means EOF",
			req:        guest.ExecRequest{Command: "wc -c"},
			wantStdout: "0\n",
		},
		{
			name:       "base environment",
			req:        guest.ExecRequest{Command: `echo "$HOME $USER $LOGNAME $SHELL"; echo "$PATH"`},
			wantStdout: g.home() + " root root /bin/sh\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
		},
		{name: "cwd is home", req: guest.ExecRequest{Command: "pwd"}, wantStdout: g.home() + "\n"},
		{
			name:       "request env",
			req:        guest.ExecRequest{Command: `echo "$FOO|$BAR"`, Env: map[string]string{"FOO": "a b", "BAR": "it's"}},
			wantStdout: "a b|it's\n",
		},
		{
			name:       "own process group and session",
			req:        guest.ExecRequest{Command: `ps -o pid=,pgid=,sid= -p $$ | awk '{print ($1==$2 && $2==$3)}'`},
			wantStdout: "1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			tt.req.Stdout, tt.req.Stderr = &stdout, &stderr
			code, err := c.Exec(context.Background(), tt.req)
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d", code, tt.wantCode)
			}
			if got := stdout.String(); got != tt.wantStdout {
				t.Errorf("stdout = %.200q, want %.200q", got, tt.wantStdout)
			}
			if got := stderr.String(); got != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
			}
		})
	}
}

func TestExecBackgroundJobDoesNotHang(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	var out bytes.Buffer
	start := time.Now()
	// The background job inherits stdout; OpenSSH would wait for it.
	code, err := c.Exec(context.Background(), guest.ExecRequest{Command: "sleep 2 & echo started", Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("Exec: code %d, err %v", code, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Exec took %v; it waited for the background job", d)
	}
	if out.String() != "started\n" {
		t.Errorf("stdout = %q", out.String())
	}
}

func TestExecPTY(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	var out bytes.Buffer
	code, err := c.Exec(context.Background(), guest.ExecRequest{
		Command: `test -t 0 && test -t 1 && echo "tty $TERM"; stty size; exit 4`,
		Env:     map[string]string{"TERM": "vt100"},
		Stdout:  &out,
		PTY:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if code != 4 {
		t.Errorf("exit code = %d, want 4", code)
	}
	if got, want := strings.ReplaceAll(out.String(), "\r\n", "\n"), "tty vt100\n24 80\n"; got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
}

func TestShell(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	resize := make(chan [2]int, 1)
	var out syncBuffer
	go func() {
		// Resize before the command that reports the size: window-change is
		// handled in order with the session's other requests.
		resize <- [2]int{100, 30}
		time.Sleep(50 * time.Millisecond)
		io.WriteString(stdinW, "stty size; echo marker$((40+2)); exit 6\n")
	}()
	code, err := c.Shell(context.Background(), stdinR, &out, nil, "xterm", 80, 24, resize)
	if err != nil {
		t.Fatal(err)
	}
	if code != 6 {
		t.Errorf("exit code = %d, want 6", code)
	}
	if s := out.String(); !strings.Contains(s, "30 100") || !strings.Contains(s, "marker42") {
		t.Errorf("output %q lacks the resized size or the marker", s)
	}
}

func TestEnv(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx := context.Background()

	steps := []struct {
		name string
		do   func() (map[string]string, error)
		want map[string]string
	}{
		{"empty", func() (map[string]string, error) { return c.Env(ctx) }, map[string]string{}},
		{"set", func() (map[string]string, error) {
			return c.SetEnv(ctx, map[string]string{"A": "1", "B": "x'y z", "_C9": ""})
		}, map[string]string{"A": "1", "B": "x'y z", "_C9": ""}},
		{"overwrite", func() (map[string]string, error) {
			return c.SetEnv(ctx, map[string]string{"A": "2"})
		}, map[string]string{"A": "2", "B": "x'y z", "_C9": ""}},
		{"unset", func() (map[string]string, error) { return c.UnsetEnv(ctx, "A", "NOPE") },
			map[string]string{"B": "x'y z", "_C9": ""}},
		{"list", func() (map[string]string, error) { return c.Env(ctx) }, map[string]string{"B": "x'y z", "_C9": ""}},
	}
	for _, s := range steps {
		got, err := s.do()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if !maps.Equal(got, s.want) {
			t.Fatalf("%s: got %v, want %v", s.name, got, s.want)
		}
	}

	if st, err := os.Stat(g.envFile()); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("env file: %v, mode %v; want mode 0600", err, st.Mode())
	}
	// The profile copy must reproduce the values when sourced by sh.
	var out bytes.Buffer
	if _, err := c.Exec(ctx, guest.ExecRequest{
		Command: `env -i /bin/sh -c '. "$0"; printf "%s|%s" "$B" "${_C9-unset}"' ` + g.profileFile(),
		Stdout:  &out, Stderr: &out,
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "x'y z|"; got != want {
		t.Errorf("sourced profile gives %q, want %q", got, want)
	}
}

func TestEnvInvalidNames(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	for _, name := range []string{"", "1A", "A-B", "A=B", "A B", "é"} {
		t.Run(strconv.Quote(name), func(t *testing.T) {
			if _, err := c.SetEnv(context.Background(), map[string]string{name: "v"}); !errors.Is(err, guest.ErrInvalidName) {
				t.Errorf("SetEnv: err = %v, want ErrInvalidName", err)
			}
			if _, err := c.UnsetEnv(context.Background(), name); !errors.Is(err, guest.ErrInvalidName) {
				t.Errorf("UnsetEnv: err = %v, want ErrInvalidName", err)
			}
		})
	}
}

func TestEnvPrecedence(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx := context.Background()
	if _, err := c.SetEnv(ctx, map[string]string{"FROM_FILE": "file", "BOTH": "file", "HOME": "/elsewhere"}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := c.Exec(ctx, guest.ExecRequest{
		Command: `echo "$FROM_FILE $BOTH $HOME"`,
		Env:     map[string]string{"BOTH": "request"},
		Stdout:  &out,
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "file request /elsewhere\n"; got != want {
		t.Errorf("got %q, want %q (base < file < request)", got, want)
	}
}

func TestExecContextKills(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	pidFile := filepath.Join(t.TempDir(), "pids")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(pidFile); strings.Count(string(b), "\n") == 2 {
				break
			}
		}
		cancel()
	}()
	start := time.Now()
	_, err := c.Exec(ctx, guest.ExecRequest{
		// Both the shell and a child in its process group must die.
		Command: "sleep 300 & echo $! >" + pidFile + ".tmp; echo $$ >>" + pidFile + ".tmp; mv " + pidFile + ".tmp " + pidFile + "; wait",
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Exec: err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Exec returned after %v", d)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		waitGone(t, pid)
	}
}

// waitGone fails unless pid exits (or is a zombie nobody reaped yet).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		// Orphaned children are reparented to a reaper we do not control;
		// a zombie has exited, which is what matters here.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return
		}
	}
	t.Errorf("process %d still running", pid)
}

func TestDial(t *testing.T) {
	g := startGuest(t)
	other := newKey(t)
	tests := []struct {
		name    string
		hostKey ssh.PublicKey
		key     ssh.Signer
		wantErr error
	}{
		{"pinned keys", g.hostKey.PublicKey(), g.clientKey, nil},
		{"wrong host key", other.PublicKey(), g.clientKey, guest.ErrHostKeyMismatch},
		{"wrong client key", g.hostKey.PublicKey(), other, guest.ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			c, err := guest.Dial(ctx, g.addr, tt.hostKey, tt.key)
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("Dial: err = %v, want %v", err, tt.wantErr)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Dial took %v; rejections must not be retried", d)
			}
		})
	}
}

func TestDialWaitsForGuest(t *testing.T) {
	// Reserve a port, free it, and start serving on it only later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &testGuest{addr: ln.Addr().String(), hostKey: newKey(t), clientKey: newKey(t), dir: t.TempDir()}
	ln.Close()

	const bootDelay = 300 * time.Millisecond
	var listening atomic.Int64
	go func() {
		time.Sleep(bootDelay)
		ln, err := net.Listen("tcp", g.addr)
		if err != nil {
			t.Error(err)
			return
		}
		listening.Store(time.Now().UnixNano())
		serveOn(t, g, ln)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Tens of milliseconds when idle; the bound leaves room for a CI
	// machine whose cores are busy booting VMs, and still catches a
	// back-off that grows to seconds.
	if lag := time.Since(time.Unix(0, listening.Load())); lag > 750*time.Millisecond {
		t.Errorf("Dial noticed the listener %v after it appeared", lag)
	}
}

func TestDialContextExpiry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	hostKey, key := newKey(t).PublicKey(), newKey(t)
	// The keys are made first so that a loaded machine still makes a
	// refused attempt before the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = guest.Dial(ctx, addr, hostKey, key)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want DeadlineExceeded naming the last dial error", err)
	}
}

func TestSFTP(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	sc, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	data := bytes.Repeat([]byte("smolvm\n"), 100_000)
	f, err := sc.Create("file.txt") // relative to the home directory
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(g.home(), "file.txt")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file in guest: %d bytes, err %v; want %d bytes", len(got), err, len(data))
	}
	f, err = sc.Open(filepath.Join(g.home(), "file.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, err %v; want %d bytes", len(got), err, len(data))
	}
}

func TestPoweroff(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	if err := c.Poweroff(context.Background()); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); g.poweroffs.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Poweroff callback not called")
		}
	}
}

// TestNoLeaks checks that finished sessions leave no goroutines or file
// descriptors behind, in the client or the server (both live here).
func TestNoLeaks(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx := context.Background()
	run := func() {
		if _, err := c.Exec(ctx, guest.ExecRequest{Command: "echo x; echo y >&2", Stdin: strings.NewReader("in")}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, guest.ExecRequest{Command: "true", PTY: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Env(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run() // warm up lazily created state
	fds, goroutines := countFDs(t), runtime.NumGoroutine()
	for range 20 {
		run()
	}
	var gotFDs, gotG int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		gotFDs, gotG = countFDs(t), runtime.NumGoroutine()
		if gotFDs <= fds && gotG <= goroutines {
			return
		}
	}
	t.Errorf("after 20 rounds: fds %d -> %d, goroutines %d -> %d", fds, gotFDs, goroutines, gotG)
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func BenchmarkExecTrue(b *testing.B) {
	g := startGuest(b)
	c := dial(b, g)
	ctx := context.Background()
	for b.Loop() {
		if code, err := c.Exec(ctx, guest.ExecRequest{Command: "true"}); err != nil || code != 0 {
			b.Fatal(code, err)
		}
	}
}
