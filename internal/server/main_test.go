package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// testEnv is what the tests share: a state directory of their own (set as
// SMOLVM_HOME), the guest agent, and why VM tests cannot run, if so.
var testEnv struct {
	home, agent, skip string
}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "smolvm-server-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// State directories do not know each other's IP leases, and a VM
	// holds no TAP (which the pool skips) while created, stopped or
	// hibernated; so each test package that boots VMs leases from a
	// part of the pool of its own.
	if os.Getenv("SMOLVM_SUBNET") == "" {
		os.Setenv("SMOLVM_SUBNET", "172.29.64.0/19")
	}
	testEnv.home = filepath.Join(tmp, "home")
	os.Setenv("SMOLVM_HOME", testEnv.home)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testEnv.skip = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
	} else if os.Getenv("SMOLVM_ALPINE_SOURCE") == "" {
		testEnv.skip = "SMOLVM_ALPINE_SOURCE is unset: point it at a local Alpine minirootfs (source scripts/env.sh)"
	}
	if testEnv.skip != "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "VM tests cannot run in CI:", testEnv.skip)
		return 1
	}
	if testEnv.skip == "" {
		testEnv.agent = filepath.Join(tmp, "smolvm-agent")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", testEnv.agent, "github.com/smolvm/smolvm/cmd/smolvm-agent")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building the agent: %v\n%s", err, b)
			return 1
		}
		// The CLI, as every running VM's keeper.
		keeperBin := filepath.Join(tmp, "smolvm")
		build = exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", keeperBin, "github.com/smolvm/smolvm/cmd/smolvm")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building the CLI: %v\n%s", err, b)
			return 1
		}
		os.Setenv("SMOLVM_KEEPER", keeperBin)
	}
	code := m.Run()
	if testEnv.skip == "" {
		vms, err := smolvm.List(context.Background(), smolvm.WithHome(testEnv.home))
		if err != nil {
			fmt.Fprintln(os.Stderr, "list after the tests:", err)
			return 1
		}
		for _, vm := range vms {
			fmt.Fprintf(os.Stderr, "LEAK after the tests: VM %s (%s)\n", vm.ID, vm.State)
			code = 1
			if v, err := smolvm.FromID(context.Background(), vm.ID, smolvm.WithHome(testEnv.home)); err == nil {
				v.Delete(context.Background())
			}
		}
	}
	return code
}

func requireVM(t *testing.T) {
	t.Helper()
	if testEnv.skip != "" {
		t.Skip("VM test skipped: " + testEnv.skip)
	}
}

// testServer is a real server on a UNIX socket of the test's own.
type testServer struct {
	srv    *server.Server
	sock   string
	client *http.Client
	base   string
}

// startServer serves cfg (Home and Agent default to the test env's) on a
// fresh socket until the test ends.
func startServer(t *testing.T, cfg server.Config) *testServer {
	t.Helper()
	if cfg.Home == "" {
		cfg.Home = testEnv.home
	}
	if cfg.Agent == "" {
		cfg.Agent = testEnv.agent
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := server.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, 0, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		srv.Close()
	})
	return &testServer{srv: srv, sock: sock, client: unixClient(sock), base: "http://smolvm"}
}

func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// response is a finished request: status, headers and body.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) errorBody(t *testing.T) api.ErrorDetail {
	t.Helper()
	var e api.ErrorBody
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("status %d, body not an error body: %v: %s", r.status, err, r.body)
	}
	return e.Error
}

// do sends a request; body is JSON-encoded unless it is a string, []byte
// or io.Reader (sent as is).
func (ts *testServer) do(t *testing.T, ctx context.Context, method, path string, body any, header ...string) response {
	t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = strings.NewReader(string(b))
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, ct = strings.NewReader(string(j)), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, ts.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// decodeJSON decodes r's body into v, failing on a status other than want.
func decodeJSON(t *testing.T, r response, want int, v any) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d: %s", r.status, want, r.body)
	}
	if v != nil {
		if err := json.Unmarshal(r.body, v); err != nil {
			t.Fatalf("decode %s: %v", r.body, err)
		}
	}
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
