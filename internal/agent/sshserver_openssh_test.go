package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/agent"
	"github.com/smolvm/smolvm/internal/guest"
)

// testServer is an agent.Server on loopback plus what clients need to
// reach it: an OpenSSH identity file and known_hosts file.
type testServer struct {
	addr       string
	port       string
	hostKey    ssh.Signer
	clientKey  ssh.Signer
	keyFile    string
	knownHosts string
	home       string
	poweroffs  atomic.Int32
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	dir := t.TempDir()
	hostKey, _, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clientKey, clientPEM, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{
		addr:       ln.Addr().String(),
		hostKey:    hostKey,
		clientKey:  clientKey,
		keyFile:    filepath.Join(dir, "id_ed25519"),
		knownHosts: filepath.Join(dir, "known_hosts"),
		home:       filepath.Join(dir, "root"),
	}
	_, s.port, _ = net.SplitHostPort(s.addr)
	if err := os.WriteFile(s.keyFile, clientPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.knownHosts, []byte(guest.KnownHostsLine(s.addr, hostKey.PublicKey())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.ServerConfig{
		HostKey:        hostKey,
		AuthorizedKeys: []ssh.PublicKey{clientKey.PublicKey()},
		EnvFile:        filepath.Join(dir, "env.json"),
		ProfileFile:    filepath.Join(dir, "profile.d", "smolvm_env.sh"),
		Shell:          "/bin/sh",
		HomeDir:        s.home,
		Poweroff:       func() { s.poweroffs.Add(1) },
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
	return s
}

// opensshArgs are the options that make the system ssh, sftp and scp use
// only this test's key and pins, whatever the user's configuration.
func (s *testServer) opensshArgs() []string {
	return []string{
		"-F", "/dev/null",
		"-i", s.keyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + s.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
	}
}

// openssh runs the named OpenSSH tool, or skips the test if it is missing.
func openssh(t *testing.T, ctx context.Context, tool string, args ...string) *exec.Cmd {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("OpenSSH %s not installed: %v", tool, err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=")
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}

func TestOpenSSHExec(t *testing.T) {
	s := startServer(t)
	tests := []struct {
		name       string
		extra      []string
		command    string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "exit code", command: "echo hi; exit 7", wantCode: 7, wantStdout: "hi\n"},
		{name: "stderr apart", command: "echo out; echo err >&2", wantStdout: "out\n", wantStderr: "err\n"},
		{name: "stdin", command: "tr a-z A-Z", stdin: "shout\n", wantStdout: "SHOUT\n"},
		{name: "killed by signal", command: "kill -KILL $$", wantCode: 255},
		{name: "pty", extra: []string{"-tt"}, command: "test -t 1 && echo tty", wantStdout: "tty\r\n"},
		// Four keepalives go out during the sleep; three unanswered would end
		// the session. CountMax 3, not 1, so a loaded CI machine's delay in
		// answering one cannot fail the test.
		{name: "keepalives answered", extra: []string{"-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3"},
			command: "sleep 4.5; echo alive", wantStdout: "alive\n"},
		{name: "env subsystem", extra: []string{"-s"}, command: "smolvm-env", stdin: `{"op":"set","vars":{"X":"1"}}`,
			wantStdout: "{\"env\":{\"X\":\"1\"}}\n"},
		{name: "env subsystem error", extra: []string{"-s"}, command: "smolvm-env", stdin: `{"op":"set","vars":{"1X":"1"}}`,
			wantCode: 1, wantStdout: `{"error":"invalid variable name \"1X\": must match [A-Za-z_][A-Za-z0-9_]*"}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append(s.opensshArgs(), "-p", s.port)
			args = append(args, tt.extra...)
			args = append(args, "root@127.0.0.1", tt.command)
			cmd := openssh(t, ctx, "ssh", args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(tt.stdin), &stdout, &stderr
			code := exitCode(t, cmd.Run())
			if code != tt.wantCode || stdout.String() != tt.wantStdout || stderr.String() != tt.wantStderr {
				t.Errorf("ssh %q: exit %d, stdout %q, stderr %q; want %d, %q, %q",
					tt.command, code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

func TestOpenSSHFileTransfer(t *testing.T) {
	s := startServer(t)
	local := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
	src := filepath.Join(local, "src.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	batch := filepath.Join(local, "batch")
	if err := os.WriteFile(batch, []byte("put "+src+" via-sftp\nget via-sftp "+filepath.Join(local, "back-sftp")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	steps := []struct {
		name string
		tool string
		args []string
	}{
		{"sftp", "sftp", []string{"-P", s.port, "-b", batch, "root@127.0.0.1"}},
		{"scp up", "scp", []string{"-P", s.port, src, "root@127.0.0.1:via-scp"}},
		{"scp down", "scp", []string{"-P", s.port, "root@127.0.0.1:via-scp", filepath.Join(local, "back-scp")}},
	}
	for _, st := range steps {
		cmd := openssh(t, ctx, st.tool, append(s.opensshArgs(), st.args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", st.name, err, out)
		}
	}
	for _, path := range []string{
		filepath.Join(s.home, "via-sftp"), filepath.Join(local, "back-sftp"),
		filepath.Join(s.home, "via-scp"), filepath.Join(local, "back-scp"),
	} {
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes, err %v; want %d bytes", path, len(got), err, len(data))
		}
	}
}

// rawClient connects with x/crypto/ssh to reach protocol features that
// guest.Client does not expose.
func rawClient(t *testing.T, s *testServer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", s.addr, &ssh.ClientConfig{
		User:            "anyone",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(s.clientKey)},
		HostKeyCallback: ssh.FixedHostKey(s.hostKey.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDirectTCPIP(t *testing.T) {
	s := startServer(t)
	c := rawClient(t, s)

	// An upper-casing service that answers only once its input has ended,
	// which needs half-close to pass through the forward.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				in, _ := io.ReadAll(conn)
				conn.Write(bytes.ToUpper(in))
			}()
		}
	}()

	for i := range 3 {
		conn, err := c.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := "request " + strconv.Itoa(i)
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != strings.ToUpper(msg) {
			t.Errorf("forward %d: got %q, err %v", i, got, err)
		}
		conn.Close()
	}

	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln2.Addr().String()
	ln2.Close()
	if conn, err := c.Dial("tcp", closed); err == nil {
		conn.Close()
		t.Error("forward to a closed port succeeded")
	}
}

func TestGlobalRequests(t *testing.T) {
	s := startServer(t)
	c := rawClient(t, s)
	tests := []struct {
		request string
		wantOK  bool
	}{
		{"keepalive@openssh.com", false},
		{"tcpip-forward", false},
		{"poweroff@smolvm", true},
	}
	for _, tt := range tests {
		ok, _, err := c.SendRequest(tt.request, true, nil)
		if err != nil || ok != tt.wantOK {
			t.Errorf("%s: ok %v, err %v; want ok %v", tt.request, ok, err, tt.wantOK)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); s.poweroffs.Load() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Poweroff called %d times, want 1", s.poweroffs.Load())
		}
	}
}

func TestSignalRequest(t *testing.T) {
	s := startServer(t)
	c := rawClient(t, s)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("echo ready; sleep 30"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(stdout, buf); err != nil {
		t.Fatal(err)
	}
	if err := sess.Signal(ssh.SIGINT); err != nil {
		t.Fatal(err)
	}
	var ee *ssh.ExitError
	if err := sess.Wait(); !errors.As(err, &ee) || ee.Signal() != "INT" {
		t.Errorf("Wait: %v; want exit by signal INT", err)
	}
}

// TestConnectionDropKills checks that a command dies with its connection.
func TestConnectionDropKills(t *testing.T) {
	s := startServer(t)
	c := rawClient(t, s)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("echo $$; exec sleep 300"); err != nil {
		t.Fatal(err)
	}
	var pid int
	line := make([]byte, 32)
	n, err := stdout.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	if pid, err = strconv.Atoi(strings.TrimSpace(string(line[:n]))); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return // the server reaped it
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d survived its connection", pid)
		}
	}
}
