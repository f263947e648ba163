package mcpserver_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/smolvm/smolvm/internal/mcpserver"
)

// serveHTTP serves srv's Handler at /mcp on a UNIX socket, as smolvm
// serve mounts it, and returns a client transport factory for it.
func serveHTTP(t *testing.T, srv *mcpserver.Server) (func() *mcp.StreamableClientTransport, *http.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "smolvm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", srv.Handler())
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return func() *mcp.StreamableClientTransport {
		return &mcp.StreamableClientTransport{Endpoint: "http://localhost/mcp", HTTPClient: hc, DisableStandaloneSSE: true}
	}, hc
}

func connectHTTP(t *testing.T, ctx context.Context, tr *mcp.StreamableClientTransport) client {
	t.Helper()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-agent"}, nil).Connect(ctx, tr, nil)
	if err != nil {
		t.Fatalf("connect over HTTP: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return client{t, cs}
}

// waitVMs waits until the state directory holds exactly want (sorted).
func waitVMs(t *testing.T, want []string, d time.Duration) {
	t.Helper()
	slices.Sort(want)
	var ids []string
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ids = vmIDs(t)
		slices.Sort(ids)
		if slices.Equal(ids, want) {
			return
		}
	}
	t.Fatalf("VMs %v, want %v", ids, want)
}

// TestHTTP drives the streamable HTTP handler with the Go SDK's client:
// a session's sandboxes go when the client ends the session, when it
// goes quiet past the session timeout, and when the server closes; kept
// ones stay.
func TestHTTP(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 5*time.Minute)
	srv, err := mcpserver.New(ctx, mcpserver.Config{Home: testEnv.home, MaxSandboxes: 2})
	if err != nil {
		t.Fatal(err)
	}
	dial, hc := serveHTTP(t, srv)
	// A second server on the same state directory, whose sessions time
	// out quickly.
	quick, err := mcpserver.New(ctx, mcpserver.Config{Home: testEnv.home, SessionTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { quick.Close(context.Background()) })
	dialQuick, _ := serveHTTP(t, quick)

	// A session the client ends (DELETE).
	c := connectHTTP(t, ctx, dial())
	if v := c.cs.InitializeResult().ProtocolVersion; v >= "2026-07-28" {
		t.Errorf("negotiated %s over HTTP: a sessionless protocol has no session end to delete sandboxes at", v)
	}
	var made, kept sandboxOut
	c.ok(ctx, "create_sandbox", map[string]any{}, &made)
	c.ok(ctx, "create_sandbox", map[string]any{"keep": true}, &kept)
	c.fails(ctx, "create_sandbox", map[string]any{}, "at most 2 at once")
	// Another session sees the kept sandbox, not this one's own.
	other := connectHTTP(t, ctx, dial())
	var l listResult
	other.ok(ctx, "list_sandboxes", map[string]any{}, &l)
	if !slices.Equal(l.ids(), []string{kept.ID}) {
		t.Errorf("another session lists %v, want only the kept %s", l.ids(), kept.ID)
	}
	other.fails(ctx, "run_command", map[string]any{"sandbox": made.ID, "command": "true"}, "no sandbox")
	other.cs.Close()
	var r runResult
	c.ok(ctx, "run_command", map[string]any{"sandbox": made.ID, "command": "echo over http"}, &r)
	if r.Stdout != "over http\n" {
		t.Errorf("run: %+v", r)
	}
	// The client ends the session (DELETE) while a long command runs:
	// the command is cancelled, the session ends at once. (The SDK
	// client's own Close first waits for its calls, so the test sends the
	// DELETE itself, as a client giving up does.)
	inflight := make(chan error, 1)
	go func() {
		_, err := c.cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_command", Arguments: map[string]any{"sandbox": made.ID, "command": "sleep 600", "timeout_seconds": 900}})
		inflight <- err
	}()
	time.Sleep(time.Second)
	start := time.Now()
	del, _ := http.NewRequestWithContext(ctx, http.MethodDelete, "http://localhost/mcp", nil)
	del.Header.Set("Mcp-Session-Id", c.cs.ID())
	resp, err := hc.Do(del)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Errorf("DELETE: %s", resp.Status)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("ending the session took %v", d)
	}
	select {
	case <-inflight:
	case <-time.After(30 * time.Second):
		t.Fatal("the call in flight did not end with its session")
	}
	c.cs.Close()
	waitVMs(t, []string{kept.ID}, time.Minute)

	// A client that goes away without a word: the session times out.
	c2 := connectHTTP(t, ctx, dialQuick())
	c2.ok(ctx, "create_sandbox", map[string]any{}, &made)
	c2.ok(ctx, "run_command", map[string]any{"sandbox": kept.ID, "command": "true"}, nil)
	waitVMs(t, []string{kept.ID}, time.Minute)
	if _, err := c2.cs.CallTool(ctx, &mcp.CallToolParams{Name: "list_sandboxes", Arguments: map[string]any{}}); err == nil {
		t.Errorf("a call in the timed-out session succeeded")
	}

	// Closing the server ends the sessions still open.
	c3 := connectHTTP(t, ctx, dial())
	c3.ok(ctx, "create_sandbox", map[string]any{}, &made)
	c3.ok(ctx, "delete_sandbox", map[string]any{"sandbox": kept.ID}, nil)
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitVMs(t, nil, 10*time.Second)
	if _, err := c3.cs.CallTool(ctx, &mcp.CallToolParams{Name: "list_sandboxes", Arguments: map[string]any{}}); err == nil {
		t.Errorf("a call after Close succeeded")
	} else if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a call after Close hung: %v", err)
	}
}
