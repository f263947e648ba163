package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// TestBadRequests: every bad request gets a JSON error with the right
// code and status, and changes nothing.
func TestBadRequests(t *testing.T) {
	home := t.TempDir()
	ts := startServer(t, server.Config{Home: home})
	ctx := testContext(t, 30*time.Second)
	json := []string{"Content-Type", "application/json"}
	tests := []struct {
		name, method, path string
		body               any
		header             []string
		status             int
		code, field        string
	}{
		{"unknown route", "GET", "/v2/nothing", nil, nil, 404, api.CodeNotFound, ""},
		{"wrong method", "PUT", "/v1/vms", nil, nil, 405, api.CodeNotAllowed, ""},
		{"no body", "POST", "/v1/vms", nil, nil, 400, api.CodeInvalid, ""},
		{"malformed JSON", "POST", "/v1/vms", `{"id": "x",`, json, 400, api.CodeInvalid, ""},
		{"unknown field", "POST", "/v1/vms", `{"id":"x","memory":512}`, json, 400, api.CodeInvalid, "memory"},
		{"wrong type", "POST", "/v1/vms", `{"id":"x","memory_mib":"lots"}`, json, 400, api.CodeInvalid, "memory_mib"},
		{"two values", "POST", "/v1/vms", `{"id":"x"} {"id":"y"}`, json, 400, api.CodeInvalid, ""},
		{"wrong content type", "POST", "/v1/vms", `{"id":"x"}`, []string{"Content-Type", "text/plain"}, 415, api.CodeUnsupported, ""},
		{"oversize body", "POST", "/v1/vms", `{"id":"x","boot_args":"` + strings.Repeat("a", server.MaxJSONBody) + `"}`, json, 413, api.CodeTooLarge, ""},
		{"bad id", "POST", "/v1/vms", `{"id":"../../etc"}`, json, 400, api.CodeInvalid, "id"},
		{"negative memory", "POST", "/v1/vms", `{"memory_mib":-1}`, json, 400, api.CodeInvalid, "memory_mib"},
		{"bad network", "POST", "/v1/vms", `{"network":"wifi"}`, json, 400, api.CodeInvalid, "network"},
		{"negative boot timeout", "POST", "/v1/vms", `{"boot_timeout_seconds":-1}`, json, 400, api.CodeInvalid, "boot_timeout_seconds"},
		{"snapshot with sizes", "POST", "/v1/vms", `{"from_snapshot":"s","memory_mib":512}`, json, 400, api.CodeInvalid, "from_snapshot"},
		{"missing snapshot", "POST", "/v1/vms", `{"from_snapshot":"nope"}`, json, 404, api.CodeNotFound, ""},
		{"missing VM", "GET", "/v1/vms/nope", nil, nil, 404, api.CodeNotFound, ""},
		{"exec on missing VM", "POST", "/v1/vms/nope/exec", `{"cmd":"true"}`, json, 404, api.CodeNotFound, ""},
		{"empty cmd", "POST", "/v1/vms/nope/exec", `{"cmd":""}`, json, 400, api.CodeInvalid, "cmd"},
		{"bad env name", "POST", "/v1/vms/nope/exec", `{"cmd":"true","env":{"A-B":"1"}}`, json, 400, api.CodeInvalid, "env"},
		{"stdin twice", "POST", "/v1/vms/nope/exec", `{"cmd":"cat","stdin":"a","stdin_b64":"YQ=="}`, json, 400, api.CodeInvalid, "stdin_b64"},
		{"bad stream flag", "POST", "/v1/vms/nope/exec?stream=maybe", `{"cmd":"true"}`, json, 400, api.CodeInvalid, "stream"},
		{"bad state filter", "GET", "/v1/vms?state=sleeping", nil, nil, 400, api.CodeInvalid, "state"},
		{"missing snapshot info", "GET", "/v1/snapshots/nope", nil, nil, 404, api.CodeNotFound, ""},
		{"missing image", "GET", "/v1/images/nope", nil, nil, 404, api.CodeNotFound, ""},
		{"bad image name", "POST", "/v1/images", `{"name":"../x","from":"alpine"}`, json, 400, api.CodeInvalid, "name"},
		{"files without path", "GET", "/v1/vms/nope/files", nil, nil, 400, api.CodeInvalid, "path"},
		{"files wrong type", "PUT", "/v1/vms/nope/files?path=/x", "data", []string{"Content-Type", "text/html"}, 415, api.CodeUnsupported, ""},
		{"files bad mode", "PUT", "/v1/vms/nope/files?path=/x", "data", []string{api.FileModeHeader, "rwx"}, 400, api.CodeInvalid, "mode"},
		{"close port without port", "DELETE", "/v1/vms/nope/ports", nil, nil, 400, api.CodeInvalid, "host_port"},
		{"fork too many", "POST", "/v1/vms/nope/fork", `{"count":1000}`, json, 400, api.CodeInvalid, "count"},
		{"logs bad tail", "GET", "/v1/vms/nope/logs?tail=-1", nil, nil, 400, api.CodeInvalid, "tail"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ts.do(t, ctx, tt.method, tt.path, tt.body, tt.header...)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			conforms(t, "ErrorBody", r.body)
			e := r.errorBody(t)
			if e.Code != tt.code || e.Field != tt.field {
				t.Errorf("error %+v, want code %q field %q", e, tt.code, tt.field)
			}
			if e.Message == "" {
				t.Error("empty message")
			}
		})
	}
	if r := ts.do(t, ctx, "PUT", "/v1/vms", nil); r.header.Get("Allow") != "GET, POST" {
		t.Errorf("405 Allow = %q, want GET, POST", r.header.Get("Allow"))
	}
	vms, err := smolvm.List(ctx, smolvm.WithHome(home))
	if err != nil || len(vms) != 0 {
		t.Errorf("after bad requests: VMs %v, %v; want none", vms, err)
	}
}

func TestHealthAndDocument(t *testing.T) {
	ts := startServer(t, server.Config{Home: t.TempDir(), Version: "test"})
	ctx := testContext(t, 30*time.Second)
	var h api.Health
	r := ts.do(t, ctx, "GET", "/v1/health", nil)
	conforms(t, "Health", r.body)
	decodeJSON(t, r, 200, &h)
	if h.API != api.Version || h.PID != os.Getpid() || h.Version != "test" {
		t.Errorf("health %+v", h)
	}
	r = ts.do(t, ctx, "GET", "/openapi.json", nil)
	if r.status != 200 || string(r.body) != string(server.OpenAPI()) {
		t.Errorf("GET /openapi.json: %d, %d bytes; want the document", r.status, len(r.body))
	}
	r = ts.do(t, ctx, "GET", "/v1/doctor", nil)
	conforms(t, "Checks", r.body)
	for _, p := range []string{"/v1/vms", "/v1/snapshots", "/v1/images"} {
		r := ts.do(t, ctx, "GET", p, nil)
		if r.status != 200 {
			t.Errorf("GET %s: %d %s", p, r.status, r.body)
		}
	}
	conforms(t, "VMList", ts.do(t, ctx, "GET", "/v1/vms", nil).body)
	conforms(t, "SnapshotList", ts.do(t, ctx, "GET", "/v1/snapshots", nil).body)
	conforms(t, "ImageList", ts.do(t, ctx, "GET", "/v1/images", nil).body)
}

// TestAuth: on TCP, a request without the right token is refused with 401
// before anything runs, and a mutating one changes nothing.
func TestAuth(t *testing.T) {
	home := t.TempDir()
	token := "s3cret-token-of-the-test-0123456789"
	l, err := server.ListenTCP("127.0.0.1:0", token, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Home: home, Agent: testEnv.agent})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, 0, l) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	base := "http://" + l.Addr().String()
	ts := &testServer{client: http.DefaultClient, base: base}
	rctx := testContext(t, 30*time.Second)

	for _, tc := range []struct{ name, auth string }{
		{"no token", ""},
		{"wrong token", "Bearer wrong"},
		{"token prefix", "Bearer " + token[:len(token)-1]},
		{"not bearer", "Basic " + token},
		{"token twice", "Bearer " + token + " " + token},
		{"no scheme", token},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			for _, req := range []struct{ method, path, body string }{
				{"GET", "/v1/health", ""},
				{"POST", "/v1/vms", `{"id":"intruder","start":true}`},
				{"DELETE", "/v1/images/x", ""},
				{"GET", "/openapi.json", ""},
			} {
				r := ts.do(t, rctx, req.method, req.path, req.body, append(hdr, "Content-Type", "application/json")...)
				if r.status != 401 || r.errorBody(t).Code != api.CodeUnauthorized {
					t.Errorf("%s %s: %d %s, want 401 unauthorized", req.method, req.path, r.status, r.body)
				}
				if r.header.Get("WWW-Authenticate") == "" {
					t.Errorf("%s %s: no WWW-Authenticate", req.method, req.path)
				}
			}
		})
	}
	// What a web page in the user's browser can send to 127.0.0.1: simple
	// requests (text/plain, form posts), preflights, credentials in the URL
	// or a cookie, a cross-origin WebSocket (a DNS-rebound page is one more
	// origin without the token). None carries
	// the bearer header, so all are 401 before anything runs.
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
	}{
		{"text/plain create", "POST", "/v1/vms", `{"id":"intruder","start":true}`, []string{"Content-Type", "text/plain", "Origin", "http://evil.example"}},
		{"form post", "POST", "/v1/vms", "id=intruder", []string{"Content-Type", "application/x-www-form-urlencoded"}},
		{"preflight", "OPTIONS", "/v1/vms", "", []string{"Origin", "http://evil.example", "Access-Control-Request-Method", "DELETE"}},
		{"mcp simple post", "POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call"}`, []string{"Content-Type", "text/plain"}},
		{"token in query", "GET", "/v1/vms?token=" + token + "&access_token=" + token, "", nil},
		{"token in cookie", "GET", "/v1/vms", "", []string{"Cookie", "token=" + token + "; smolvm_token=" + token}},
		{"websocket", "GET", "/v1/vms/x/exec/ws", "", []string{"Connection", "Upgrade", "Upgrade", "websocket",
			"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Origin", "http://evil.example",
			"Sec-WebSocket-Protocol", token}},
	} {
		r := ts.do(t, rctx, tc.method, tc.path, tc.body, tc.hdr...)
		if r.status != 401 {
			t.Errorf("%s: %s %s: %d %s, want 401", tc.name, tc.method, tc.path, r.status, r.body)
		}
		if h := r.header.Get("Access-Control-Allow-Origin"); h != "" {
			t.Errorf("%s: Access-Control-Allow-Origin %q: no page may read answers", tc.name, h)
		}
	}
	if vms, err := smolvm.List(rctx, smolvm.WithHome(home)); err != nil || len(vms) != 0 {
		t.Errorf("after unauthorized creates: %v, %v; want no VM", vms, err)
	}
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} { // case-insensitive (RFC 9110)
		if r := ts.do(t, rctx, "GET", "/v1/health", nil, "Authorization", scheme+" "+token); r.status != 200 {
			t.Errorf("with the token (%s): %d %s", scheme, r.status, r.body)
		}
	}

	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		if _, err := server.ListenTCP(addr, token, false); err == nil || !strings.Contains(err.Error(), "--allow-remote") {
			t.Errorf("ListenTCP(%q) without allowRemote: %v, want refused", addr, err)
		}
	}
	for _, bad := range []string{"", "a b", "tab\there", "nul\x00", "ünicode"} {
		if l, err := server.ListenTCP("127.0.0.1:0", bad, false); err == nil {
			l.Close()
			t.Errorf("ListenTCP with the token %q: no error", bad)
		}
	}
}

func TestTokenFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), api.TokenFile)
	tok, err := server.LoadOrCreateToken(file)
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v; want mode 0600", fi, err)
	}
	again, err := server.LoadOrCreateToken(file)
	if err != nil || again != tok {
		t.Errorf("second load %q, %v; want the same token", again, err)
	}
	os.Chmod(file, 0o644)
	if _, err := server.LoadOrCreateToken(file); err == nil {
		t.Error("a token file readable by others was used")
	}
	os.Chmod(file, 0o600)

	// A token someone else could have chosen: a symlink to a file (of
	// theirs, or one whose contents they know), or a file of another user.
	link := filepath.Join(t.TempDir(), api.TokenFile)
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	if _, err := server.LoadOrCreateToken(link); err == nil {
		t.Error("a token file that is a symlink was used")
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(file, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := server.LoadOrCreateToken(file); err == nil || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("a token file of another user: %v, want refused", err)
		}
	}
}

// TestSocket: the socket is 0600, a second server on it is refused, a
// stale socket is replaced, and a file that is no socket is left alone.
func TestSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, api.SocketFile)
	l, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want a socket with mode 0600", fi, err)
	}
	if _, err := server.ListenUnix(sock); !errors.Is(err, server.ErrServing) {
		t.Errorf("second ListenUnix: %v, want ErrServing", err)
	}
	l.Close()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}

	// A server that died leaves its socket file; nobody answers on it.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	l, err = server.ListenUnix(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Errorf("dial the new socket: %v", err)
	} else {
		c.Close()
	}
	l.Close()

	// A server without the lock (another version, say) that answers.
	ln, err = net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.ListenUnix(sock); !errors.Is(err, server.ErrServing) {
		t.Errorf("ListenUnix on an answering socket: %v, want ErrServing", err)
	}
	ln.Close()

	// A lock planted as a symlink (a shared socket directory) is not
	// followed: nothing is made where it points.
	other := filepath.Join(t.TempDir(), "elsewhere")
	planted := filepath.Join(dir, "planted.sock")
	if err := os.Symlink(other, planted+".lock"); err != nil {
		t.Fatal(err)
	}
	if l, err := server.ListenUnix(planted); err == nil {
		l.Close()
		t.Error("ListenUnix with a symlinked lock: no error")
	}
	if _, err := os.Lstat(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock's symlink was followed: %v", err)
	}

	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("mine"), 0o600)
	if _, err := server.ListenUnix(plain); err == nil {
		t.Error("ListenUnix over a regular file: no error")
	}
	if b, _ := os.ReadFile(plain); string(b) != "mine" {
		t.Errorf("regular file changed: %q", b)
	}
}

// TestIdleTimeout: an idle server exits; an open connection keeps it up.
func TestIdleTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Home: t.TempDir()})
	defer srv.Close()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- srv.Serve(context.Background(), 300*time.Millisecond, l) }()

	// A connection held open (a client between requests) keeps it up.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("exited with a connection open: %v", err)
	case <-time.After(time.Second):
	}
	if _, err := io.WriteString(c, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still serving 5s after the last connection closed")
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("exited after %v", d)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after exit: %v", err)
	}
}

// TestMCPMount: Config.MCP is served at /mcp, behind the same token.
func TestMCPMount(t *testing.T) {
	token := "token-of-the-mcp-test-0123456789"
	l, err := server.ListenTCP("127.0.0.1:0", token, false)
	if err != nil {
		t.Fatal(err)
	}
	mcp := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "mcp:"+r.URL.Path) })
	srv := server.New(server.Config{Home: t.TempDir(), MCP: mcp})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, 0, l) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	ts := &testServer{client: http.DefaultClient, base: "http://" + l.Addr().String()}
	rctx := testContext(t, 30*time.Second)
	if r := ts.do(t, rctx, "POST", "/mcp", "{}"); r.status != 401 {
		t.Errorf("/mcp without the token: %d %s", r.status, r.body)
	}
	if r := ts.do(t, rctx, "POST", "/mcp", "{}", "Authorization", "Bearer "+token); r.status != 200 || string(r.body) != "mcp:/mcp" {
		t.Errorf("/mcp with the token: %d %s", r.status, r.body)
	}
	// Without MCP configured there is no such route.
	plain := startServer(t, server.Config{Home: t.TempDir()})
	if r := plain.do(t, rctx, "POST", "/mcp", "{}"); r.status != 404 {
		t.Errorf("/mcp unconfigured: %d %s", r.status, r.body)
	}
}
