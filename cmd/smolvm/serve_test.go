package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/api"
)

// serveBinary builds this command into a temp dir.
func serveBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "smolvm")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startServe runs `smolvm serve --json args...` and returns what it
// printed once listening; the process is killed at the end of the test.
func startServe(t *testing.T, bin, home string, args ...string) (*exec.Cmd, api.Serving, <-chan error) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+home, "SMOLVM_TOKEN=")
	out, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = pw, &stderr
	err = cmd.Start()
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	// done yields Wait's error to one reader, then is closed.
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	var s api.Serving
	dec := json.NewDecoder(bufio.NewReader(out))
	got := make(chan error, 1)
	go func() { got <- dec.Decode(&s) }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("serve printed no JSON: %v; stderr %s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve printed nothing in 30s; stderr %s", stderr.String())
	}
	return cmd, s, done
}

func TestServeCommand(t *testing.T) {
	bin := serveBinary(t)
	home := t.TempDir()
	cmd, s, done := startServe(t, bin, home)
	sock := filepath.Join(home, api.SocketFile)
	if s.Socket != sock || len(s.URLs) != 1 || s.URLs[0] != "unix://"+sock || s.PID != cmd.Process.Pid {
		t.Errorf("serve printed %+v", s)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket: %v, %v; want mode 0600", fi, err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://smolvm/v1/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health: %v %v", resp, err)
	}
	resp.Body.Close()

	// MCP's streamable HTTP transport is mounted at /mcp.
	initReq := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"serve-test","version":"1"}}}`
	req, _ := http.NewRequest("POST", "http://smolvm/mcp", strings.NewReader(initReq))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("POST /mcp: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "serverInfo") {
		t.Errorf("MCP initialize: %d %s", resp.StatusCode, body)
	}
	if id := resp.Header.Get("Mcp-Session-Id"); id != "" {
		del, _ := http.NewRequest("DELETE", "http://smolvm/mcp", nil)
		del.Header.Set("Mcp-Session-Id", id)
		if resp, err := client.Do(del); err == nil {
			resp.Body.Close()
		}
	}

	second := exec.Command(bin, "serve")
	second.Env = append(os.Environ(), "SMOLVM_HOME="+home)
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already serving") {
		t.Errorf("second serve: %v, %s; want it refused", err, out)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve still running 20s after SIGTERM")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after exit: %v", err)
	}
}

func TestServeTCP(t *testing.T) {
	bin := serveBinary(t)
	home := t.TempDir()

	refused := exec.Command(bin, "serve", "--listen", "0.0.0.0:0")
	refused.Env = append(os.Environ(), "SMOLVM_HOME="+home)
	if out, err := refused.CombinedOutput(); err == nil || !strings.Contains(string(out), "--allow-remote") {
		t.Errorf("serve on 0.0.0.0 without --allow-remote: %v, %s", err, out)
	}

	_, s, _ := startServe(t, bin, home, "--listen", "127.0.0.1:0", "--idle-timeout", "2")
	if len(s.URLs) != 1 || !strings.HasPrefix(s.URLs[0], "tcp://127.0.0.1:") || s.Socket != "" || s.TokenFile != filepath.Join(home, api.TokenFile) {
		t.Fatalf("serve printed %+v", s)
	}
	tok, err := os.ReadFile(s.TokenFile)
	fi, _ := os.Stat(s.TokenFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v", err, fi.Mode())
	}
	url := "http://" + strings.TrimPrefix(s.URLs[0], "tcp://") + "/v1/health"
	for _, auth := range []string{"", "Bearer nope"} {
		req, _ := http.NewRequest("GET", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 401 {
			t.Errorf("auth %q: %v %v, want 401", auth, resp, err)
		} else {
			resp.Body.Close()
		}
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("with the token: %v %v", resp, err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
}

// TestServeIdle: with --idle-timeout the server exits on its own.
func TestServeIdle(t *testing.T) {
	bin := serveBinary(t)
	home := t.TempDir()
	start := time.Now()
	_, _, done := startServe(t, bin, home, "--idle-timeout", "500ms")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("idle exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still serving 20s into a 500ms idle timeout")
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("exited after %v", d)
	}
	if _, err := os.Lstat(filepath.Join(home, api.SocketFile)); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
}
