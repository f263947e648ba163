package mcpserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/mcpserver"
)

// testEnv is what the tests share: a state directory of their own (the
// default image's warm template is built once in it), the smolvm binary
// built from this checkout, the guest agent, and why VM tests cannot run.
var testEnv struct {
	home, bin, agent, skip string
}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "smolvm-mcp-test-")
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
		os.Setenv("SMOLVM_SUBNET", "172.29.96.0/19")
	}
	testEnv.home = filepath.Join(tmp, "home")
	testEnv.bin = filepath.Join(tmp, "smolvm")
	testEnv.agent = filepath.Join(tmp, "smolvm-agent")
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
		for out, pkg := range map[string]string{testEnv.bin: "../../cmd/smolvm", testEnv.agent: "../../cmd/smolvm-agent"} {
			build := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		os.Setenv("SMOLVM_HOME", testEnv.home)
		os.Setenv("SMOLVM_AGENT", testEnv.agent)
		os.Setenv("SMOLVM_KEEPER", testEnv.bin) // every running VM's keeper
	}
	code := m.Run()
	if testEnv.skip == "" {
		if leaks := findLeaks(); leaks != "" {
			fmt.Fprintln(os.Stderr, "LEAK after the tests:\n"+leaks)
			return 1
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

// findLeaks reports VMs and snapshots the tests left (the warm template
// of the default image is a cache they share).
func findLeaks() string {
	var b strings.Builder
	ctx := context.Background()
	vms, err := smolvm.List(ctx, smolvm.WithHome(testEnv.home))
	if err != nil {
		fmt.Fprintf(&b, "list: %v\n", err)
	}
	for _, vm := range vms {
		fmt.Fprintf(&b, "VM %s (%s)\n", vm.ID, vm.State)
		// Leave nothing running on the machine either.
		if v, err := smolvm.FromID(ctx, vm.ID, smolvm.WithHome(testEnv.home)); err == nil {
			v.Delete(ctx)
		}
	}
	snaps, _ := smolvm.ListSnapshots(ctx, smolvm.WithHome(testEnv.home))
	for _, s := range snaps {
		if !strings.HasPrefix(s.Name, "default-") {
			fmt.Fprintf(&b, "snapshot %s\n", s.Name)
		}
	}
	return b.String()
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// client is an MCP client session in a test.
type client struct {
	t  *testing.T
	cs *mcp.ClientSession
}

// call calls a tool and returns its result, failing the test on a
// protocol error (a tool error is a result).
func (c client) call(ctx context.Context, tool string, args map[string]any) *mcp.CallToolResult {
	c.t.Helper()
	res, err := c.cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		c.t.Fatalf("%s %v: protocol error: %v", tool, args, err)
	}
	return res
}

// ok calls a tool that must succeed and decodes its structured result
// into out.
func (c client) ok(ctx context.Context, tool string, args map[string]any, out any) {
	c.t.Helper()
	res := c.call(ctx, tool, args)
	if res.IsError {
		c.t.Fatalf("%s %v: tool error: %s", tool, args, resultText(res))
	}
	if out != nil {
		reflect.ValueOf(out).Elem().SetZero() // no field left from an earlier call
		b, err := json.Marshal(res.StructuredContent)
		if err != nil {
			c.t.Fatal(err)
		}
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s: decode %s: %v", tool, b, err)
		}
	}
}

// fails calls a tool that must fail as a tool error whose text says want.
func (c client) fails(ctx context.Context, tool string, args map[string]any, want string) *mcp.CallToolResult {
	c.t.Helper()
	res := c.call(ctx, tool, args)
	if !res.IsError {
		c.t.Fatalf("%s %v: succeeded, want a tool error saying %q: %s", tool, args, want, resultText(res))
	}
	if txt := resultText(res); !strings.Contains(txt, want) {
		c.t.Fatalf("%s %v: error %q, want it to say %q", tool, args, txt, want)
	}
	return res
}

func resultText(res *mcp.CallToolResult) string {
	var b bytes.Buffer
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// inProcess connects a client to a Server on home over in-memory
// transports; the session ends at cleanup.
func inProcess(t *testing.T, cfg mcpserver.Config) client {
	t.Helper()
	ctx := testContext(t, time.Minute)
	srv, err := mcpserver.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ct, st := mcp.NewInMemoryTransports()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), st) }()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return client{t, cs}
}

func filepathGlob(p string) ([]string, error) { return filepath.Glob(p) }

func jsonOf(v any) ([]byte, error) { return json.Marshal(v) }

func jsonInto(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}
