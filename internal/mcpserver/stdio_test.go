package mcpserver_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/smolvm/smolvm"
)

// stdioServer is `smolvm mcp` running as an MCP client's subprocess.
type stdioServer struct {
	client
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

// startStdio runs the built smolvm binary's `mcp` command on the test
// state directory and connects the Go SDK's client to it.
func startStdio(t *testing.T, ctx context.Context, args ...string) *stdioServer {
	t.Helper()
	requireVM(t)
	cmd := exec.Command(testEnv.bin, append([]string{"mcp"}, args...)...)
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+testEnv.home, "SMOLVM_AGENT="+testEnv.agent)
	stderr := &bytes.Buffer{}
	cmd.Stderr = stderr
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-agent"}, nil).Connect(ctx,
		&mcp.CommandTransport{Command: cmd, TerminateDuration: time.Minute}, nil)
	if err != nil {
		t.Fatalf("connect to smolvm mcp: %v\n%s", err, stderr)
	}
	s := &stdioServer{client: client{t, cs}, cmd: cmd, stderr: stderr}
	t.Cleanup(func() {
		cs.Close()
		if t.Failed() {
			t.Logf("smolvm mcp stderr:\n%s", stderr)
		}
	})
	return s
}

// startPiped runs `smolvm mcp` on pipes the test holds, so that it can
// close the server's stdin while a call is in flight, as a client that
// dies does (the SDK's own Close first waits for the calls to return).
func startPiped(t *testing.T, ctx context.Context) (*stdioServer, io.WriteCloser) {
	t.Helper()
	requireVM(t)
	cmd := exec.Command(testEnv.bin, "mcp")
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+testEnv.home, "SMOLVM_AGENT="+testEnv.agent)
	stderr := &bytes.Buffer{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("smolvm mcp stderr:\n%s", stderr)
		}
	})
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-agent"}, nil).Connect(ctx,
		&mcp.IOTransport{Reader: stdout, Writer: stdin}, nil)
	if err != nil {
		t.Fatalf("connect to smolvm mcp: %v\n%s", err, stderr)
	}
	return &stdioServer{client: client{t, cs}, cmd: cmd, stderr: stderr}, stdin
}

// end closes the session (stdin EOF) and waits for the server to exit.
func (s *stdioServer) end() {
	s.t.Helper()
	if err := s.cs.Close(); err != nil {
		s.t.Logf("close: %v", err)
	}
	if s.cmd.ProcessState == nil {
		s.t.Fatalf("smolvm mcp did not exit")
	}
}

// peakRSS is the server process's peak resident memory, in KiB.
func peakRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

func vmIDs(t *testing.T) []string {
	t.Helper()
	vms, err := smolvm.List(context.Background(), smolvm.WithHome(testEnv.home))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range vms {
		ids = append(ids, v.ID)
	}
	return ids
}

type sandboxOut struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Kept        bool   `json:"kept"`
	ThisSession bool   `json:"this_session"`
}

type runResult struct {
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutBase64    string `json:"stdout_base64"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StdoutBytes     int64  `json:"stdout_bytes"`
	TimedOut        bool   `json:"timed_out"`
}

type readResult struct {
	Content       string `json:"content"`
	ContentBase64 string `json:"content_base64"`
	Bytes         int    `json:"bytes"`
	Truncated     bool   `json:"truncated"`
}

type listResult struct {
	Sandboxes []sandboxOut `json:"sandboxes"`
	Snapshots []struct {
		Name string `json:"name"`
	} `json:"snapshots"`
}

func (r listResult) ids() []string {
	var ids []string
	for _, s := range r.Sandboxes {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestStdio drives `smolvm mcp` with a real MCP client, end to end on
// real VMs: create, run (non-zero exit, timeout, capped and binary
// output), files (also hostile ones), snapshot, create from it, fork,
// list, delete; then the end of the session deletes what was not kept.
func TestStdio(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	s := startStdio(t, ctx)

	var a sandboxOut
	s.ok(ctx, "create_sandbox", map[string]any{}, &a)
	if a.ID == "" || a.State != "running" || a.Kept || !a.ThisSession {
		t.Fatalf("create: %+v", a)
	}
	sb := func(args map[string]any) map[string]any { args["sandbox"] = a.ID; return args }

	t.Run("run", func(t *testing.T) {
		var r runResult
		s.ok(ctx, "run_command", sb(map[string]any{"command": "echo hi; echo oops >&2; exit 3"}), &r)
		if r.ExitCode != 3 || r.Stdout != "hi\n" || r.Stderr != "oops\n" || r.TimedOut {
			t.Errorf("non-zero exit: %+v", r)
		}
		s.ok(ctx, "run_command", sb(map[string]any{"command": "cat", "stdin": "fed\n"}), &r)
		if r.Stdout != "fed\n" {
			t.Errorf("stdin: %+v", r)
		}
	})

	t.Run("round trip", func(t *testing.T) {
		// What an agent waits for one trivial command, through the MCP
		// client, the stdio pipe and the server: logged, not asserted.
		var ds []time.Duration
		for range 15 {
			start := time.Now()
			s.ok(ctx, "run_command", sb(map[string]any{"command": "true"}), nil)
			ds = append(ds, time.Since(start))
		}
		// The same through the Go SDK in this process, for comparison.
		vm, err := smolvm.FromID(ctx, a.ID, smolvm.WithHome(testEnv.home))
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Close()
		var sdk []time.Duration
		for range 15 {
			start := time.Now()
			if _, err := vm.Run(ctx, "true"); err != nil {
				t.Fatal(err)
			}
			sdk = append(sdk, time.Since(start))
		}
		slices.Sort(ds)
		slices.Sort(sdk)
		t.Logf("run_command true over stdio MCP: median %v (min %v, max %v, n=%d); Go SDK vm.Run: median %v (min %v)",
			ds[len(ds)/2], ds[0], ds[len(ds)-1], len(ds), sdk[len(sdk)/2], sdk[0])
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		res := s.fails(ctx, "run_command", sb(map[string]any{"command": "echo before; sleep 60", "timeout_seconds": 1}), "timed out after 1s")
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("timeout took %v", d)
		}
		if !strings.Contains(resultText(res), "before") {
			t.Errorf("timeout error lacks the output so far: %s", resultText(res))
		}
		// The killed command is gone from the guest.
		var r runResult
		s.ok(ctx, "run_command", sb(map[string]any{"command": "pgrep -x sleep || echo none"}), &r)
		if strings.TrimSpace(r.Stdout) != "none" {
			t.Errorf("sleep still runs in the guest: %q", r.Stdout)
		}
	})

	t.Run("capped output", func(t *testing.T) {
		var r runResult
		s.ok(ctx, "run_command", sb(map[string]any{"command": "head -c 1000000 /dev/zero | tr '\\0' a", "max_output_bytes": 1000}), &r)
		if !r.StdoutTruncated || r.StdoutBytes != 1000000 || !strings.HasPrefix(r.Stdout, strings.Repeat("a", 1000)+"\n[smolvm: stdout cut: kept the first 1000 of 1000000 bytes") {
			t.Errorf("capped: truncated=%v bytes=%d stdout=%.1100q", r.StdoutTruncated, r.StdoutBytes, r.Stdout)
		}
	})

	t.Run("binary output", func(t *testing.T) {
		var r runResult
		s.ok(ctx, "run_command", sb(map[string]any{"command": `printf 'ok\377\376\000end'`}), &r)
		raw, err := base64.StdEncoding.DecodeString(r.StdoutBase64)
		if err != nil || string(raw) != "ok\xff\xfe\x00end" {
			t.Errorf("binary: base64 %q (%v), text %q", r.StdoutBase64, err, r.Stdout)
		}
		if r.Stdout != "ok\uFFFD\uFFFD\x00end" {
			t.Errorf("binary as text: %q", r.Stdout)
		}
	})

	t.Run("hostile output", func(t *testing.T) {
		// Endless binary output until the timeout: the server keeps only
		// the cap of it, and answers at once afterwards.
		before := peakRSS(t, s.cmd.Process.Pid)
		res := s.fails(ctx, "run_command", sb(map[string]any{"command": "cat /dev/urandom", "timeout_seconds": 4, "max_output_bytes": 4096}), "timed out")
		var r runResult
		b, _ := jsonOf(res.StructuredContent)
		jsonInto(t, b, &r)
		if !r.TimedOut || !r.StdoutTruncated || r.StdoutBytes <= 100*4096 || r.StdoutBase64 == "" {
			t.Errorf("endless output: timed_out=%v truncated=%v bytes=%d", r.TimedOut, r.StdoutTruncated, r.StdoutBytes)
		}
		after := peakRSS(t, s.cmd.Process.Pid)
		t.Logf("server peak RSS %d KiB before, %d KiB after %d bytes of output", before, after, r.StdoutBytes)
		if after-before > 32<<10 {
			t.Errorf("server peak RSS grew by %d KiB for a 4 KiB cap", after-before)
		}
		s.ok(ctx, "run_command", sb(map[string]any{"command": "true"}), &r)
	})

	t.Run("files", func(t *testing.T) {
		var w struct{ Bytes int64 }
		s.ok(ctx, "write_file", sb(map[string]any{"path": "/root/dir/hello.sh", "content": "#!/bin/sh\necho héllo\n", "mode": "0755"}), &w)
		if w.Bytes != int64(len("#!/bin/sh\necho héllo\n")) {
			t.Errorf("write: %d bytes", w.Bytes)
		}
		var r runResult
		s.ok(ctx, "run_command", sb(map[string]any{"command": "/root/dir/hello.sh"}), &r)
		if r.Stdout != "héllo\n" {
			t.Errorf("script: %+v", r)
		}
		bin := []byte{0, 1, 2, 0xff, 0xfe, 'x'}
		s.ok(ctx, "write_file", sb(map[string]any{"path": "/tmp/bin", "content": base64.StdEncoding.EncodeToString(bin), "encoding": "base64"}), nil)
		var rd readResult
		s.ok(ctx, "read_file", sb(map[string]any{"path": "/tmp/bin"}), &rd)
		if got, _ := base64.StdEncoding.DecodeString(rd.ContentBase64); !bytes.Equal(got, bin) || rd.Bytes != len(bin) || rd.Truncated {
			t.Errorf("read binary: %+v", rd)
		}
		rd = readResult{}
		s.ok(ctx, "read_file", sb(map[string]any{"path": "/root/dir/hello.sh"}), &rd)
		if rd.Content != "#!/bin/sh\necho héllo\n" || rd.ContentBase64 != "" {
			t.Errorf("read text: %+v", rd)
		}
		// Paging through a file bigger than max_bytes.
		s.ok(ctx, "run_command", sb(map[string]any{"command": "seq 1 100000 > /tmp/big"}), nil)
		s.ok(ctx, "read_file", sb(map[string]any{"path": "/tmp/big", "max_bytes": 10}), &rd)
		if rd.Content != "1\n2\n3\n4\n5\n" || !rd.Truncated {
			t.Errorf("capped read: %+v", rd)
		}
		s.ok(ctx, "read_file", sb(map[string]any{"path": "/tmp/big", "offset": 10, "max_bytes": 4}), &rd)
		if rd.Content != "6\n7\n" || !rd.Truncated {
			t.Errorf("paged read: %+v", rd)
		}
		s.fails(ctx, "read_file", sb(map[string]any{"path": "/nonexistent"}), "no such file")
		s.fails(ctx, "read_file", sb(map[string]any{"path": "relative"}), "absolute path")
	})

	t.Run("hostile files", func(t *testing.T) {
		s.ok(ctx, "run_command", sb(map[string]any{"command": "mkfifo /tmp/fifo && ln -s /dev/zero /tmp/zero"}), nil)
		for path, want := range map[string]string{
			"/dev/zero":  "not a file",
			"/tmp/zero":  "not a file", // a symlink to it
			"/tmp/fifo":  "not a file",
			"/proc/self": "not a file",
			"/root":      "not a file",
		} {
			start := time.Now()
			s.fails(ctx, "read_file", sb(map[string]any{"path": path}), want)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("read_file %s took %v", path, d)
			}
		}
		// A huge (sparse) regular file: only max_bytes come back.
		s.ok(ctx, "run_command", sb(map[string]any{"command": "truncate -s 100G /tmp/huge"}), nil)
		var rd readResult
		s.ok(ctx, "read_file", sb(map[string]any{"path": "/tmp/huge"}), &rd)
		if rd.Bytes != 64<<10 || !rd.Truncated {
			t.Errorf("huge file: %d bytes, truncated %v", rd.Bytes, rd.Truncated)
		}
	})

	// Snapshot, a copy from it, a fork, and one kept sandbox.
	s.ok(ctx, "run_command", sb(map[string]any{"command": "echo state > /root/mark"}), nil)
	s.ok(ctx, "snapshot_sandbox", sb(map[string]any{"name": "mcp-test-snap"}), nil)
	var fromSnap, kept sandboxOut
	s.ok(ctx, "create_sandbox", map[string]any{"from_snapshot": "mcp-test-snap"}, &fromSnap)
	s.ok(ctx, "create_sandbox", map[string]any{"keep": true, "name": "mcp-test-kept"}, &kept)
	var forked struct{ Sandboxes []sandboxOut }
	s.ok(ctx, "fork_sandbox", sb(map[string]any{}), &forked)
	if len(forked.Sandboxes) != 1 {
		t.Fatalf("fork: %+v", forked)
	}
	fork := forked.Sandboxes[0]
	for _, id := range []string{fromSnap.ID, fork.ID} {
		var r runResult
		s.ok(ctx, "run_command", map[string]any{"sandbox": id, "command": "cat /root/mark"}, &r)
		if r.Stdout != "state\n" {
			t.Errorf("%s: /root/mark = %q", id, r.Stdout)
		}
	}
	var l listResult
	s.ok(ctx, "list_sandboxes", map[string]any{}, &l)
	wantIDs := []string{a.ID, fromSnap.ID, kept.ID, fork.ID}
	slices.Sort(wantIDs)
	if !slices.Equal(l.ids(), wantIDs) || len(l.Snapshots) != 1 || l.Snapshots[0].Name != "mcp-test-snap" {
		t.Errorf("list: %+v, want %v and the snapshot", l, wantIDs)
	}
	s.ok(ctx, "delete_sandbox", map[string]any{"sandbox": fork.ID}, nil)
	s.fails(ctx, "run_command", map[string]any{"sandbox": fork.ID, "command": "true"}, "no sandbox")

	// The end of the session deletes everything but the kept sandbox.
	s.end()
	if ids := vmIDs(t); !slices.Equal(ids, []string{kept.ID}) {
		t.Fatalf("after the session: VMs %v, want only the kept %s", ids, kept.ID)
	}

	// The next session sees the kept sandbox (not its own) and the
	// snapshot, but not a VM made outside MCP.
	user, err := smolvm.New(ctx, smolvm.WithID("users-own"), smolvm.WithHome(testEnv.home))
	if err != nil {
		t.Fatal(err)
	}
	defer user.Delete(context.Background())
	s2 := startStdio(t, ctx)
	s2.ok(ctx, "list_sandboxes", map[string]any{}, &l)
	if len(l.Sandboxes) != 1 || l.Sandboxes[0].ID != kept.ID || !l.Sandboxes[0].Kept || l.Sandboxes[0].ThisSession {
		t.Errorf("second session lists %+v", l.Sandboxes)
	}
	var r runResult
	s2.ok(ctx, "run_command", map[string]any{"sandbox": kept.ID, "command": "echo still here"}, &r)
	if r.Stdout != "still here\n" {
		t.Errorf("kept sandbox: %+v", r)
	}
	for tool, args := range map[string]map[string]any{
		"run_command":      {"command": "true"},
		"delete_sandbox":   {},
		"read_file":        {"path": "/etc/hostname"},
		"write_file":       {"path": "/tmp/x", "content": "x"},
		"snapshot_sandbox": {"name": "stolen"},
		"fork_sandbox":     {},
	} {
		args["sandbox"] = "users-own"
		s2.fails(ctx, tool, args, `no sandbox "users-own"`)
	}
	if err := user.Refresh(ctx); err != nil {
		t.Errorf("the user's VM after the agent tried: %v", err)
	}
	s2.ok(ctx, "delete_sandbox", map[string]any{"sandbox": kept.ID}, nil)
	s2.ok(ctx, "delete_snapshot", map[string]any{"name": "mcp-test-snap"}, nil)
	s2.end()

	// --all-vms widens the agent's reach to the user's VMs.
	s3 := startStdio(t, ctx, "--all-vms")
	s3.ok(ctx, "list_sandboxes", map[string]any{}, &l)
	if !slices.Equal(l.ids(), []string{"users-own"}) {
		t.Errorf("--all-vms lists %v", l.ids())
	}
	s3.ok(ctx, "delete_sandbox", map[string]any{"sandbox": "users-own"}, nil)
	s3.end()
	if ids := vmIDs(t); len(ids) != 0 {
		t.Errorf("VMs left: %v", ids)
	}
}

// TestStdioEnd: SIGTERM and stdin EOF end the session at once, even with
// a long command in flight, and delete its sandboxes; after a SIGKILL,
// which leaves no chance to clean up, the next server deletes the
// orphans. Kept sandboxes stay every time.
func TestStdioEnd(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	for _, how := range []string{"SIGTERM", "EOF", "SIGKILL"} {
		var s *stdioServer
		var stdin io.WriteCloser
		if how == "EOF" {
			s, stdin = startPiped(t, ctx)
		} else {
			s = startStdio(t, ctx)
		}
		var made, kept sandboxOut
		s.ok(ctx, "create_sandbox", map[string]any{}, &made)
		s.ok(ctx, "create_sandbox", map[string]any{"keep": true}, &kept)
		// A command that would run for ten minutes.
		go s.cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_command", Arguments: map[string]any{"sandbox": made.ID, "command": "sleep 600", "timeout_seconds": 900}})
		time.Sleep(time.Second)
		start := time.Now()
		switch how {
		case "SIGTERM":
			if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitExit(t, s.cmd, 30*time.Second)
		case "EOF":
			stdin.Close()
			waitExit(t, s.cmd, 30*time.Second)
		case "SIGKILL":
			if err := s.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			waitExit(t, s.cmd, 30*time.Second)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("%s: the server took %v to exit", how, d)
		}
		ids := vmIDs(t)
		switch how {
		case "SIGTERM", "EOF":
			if !slices.Equal(ids, []string{kept.ID}) {
				t.Errorf("after %s: VMs %v, want only the kept %s", how, ids, kept.ID)
			}
		case "SIGKILL":
			if !slices.Contains(ids, made.ID) {
				t.Fatalf("after SIGKILL the sandbox %s is already gone: %v", made.ID, ids)
			}
			// The next server sweeps the orphan up at start.
			s2 := startStdio(t, ctx)
			if got := vmIDs(t); !slices.Equal(got, []string{kept.ID}) {
				t.Errorf("after the next start: VMs %v, want only the kept %s", got, kept.ID)
			}
			s2.end()
		}
		vm, err := smolvm.FromID(ctx, kept.ID, smolvm.WithHome(testEnv.home))
		if err != nil {
			t.Fatal(err)
		}
		vm.Delete(ctx)
	}
}

// waitExit waits for the server process to exit (a zombie counts: the
// transport reaps it when the test closes the session). It does not close
// the server's stdin, so a SIGTERM alone has to end it.
func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
		if err != nil {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("smolvm mcp (pid %d) did not exit within %v", cmd.Process.Pid, d)
}

// TestStdioPiped: a script that pipes its requests in and closes stdin at
// once (echo ... | smolvm mcp) gets every answer, also to a call that
// takes a while, a line that is not JSON gets a parse error and does not
// end the session, and its sandbox is deleted when the session ends.
func TestStdioPiped(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 3*time.Minute)
	in := strings.Join([]string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"script","version":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`not json at all`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		``,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_sandbox","arguments":{}}}`,
		`{"jsonrpc":"2.0","id":"four","method":"tools/call","params":{"name":"list_sandboxes","arguments":{}}}`,
	}, "\n") + "\n"
	cmd := exec.CommandContext(ctx, testEnv.bin, "mcp")
	cmd.Env = append(os.Environ(), "SMOLVM_HOME="+testEnv.home, "SMOLVM_AGENT="+testEnv.agent)
	cmd.Stdin = strings.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smolvm mcp: %v\n%s", err, stderr.String())
	}
	answered := map[string]bool{}
	parseErrors := 0
	var made string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var msg struct {
			ID     json.RawMessage `json:"id"`
			Result *struct {
				StructuredContent struct {
					ID string `json:"id"`
				} `json:"structuredContent"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(line), &msg); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if string(msg.ID) == "null" && strings.Contains(line, "-32700") {
			parseErrors++
		}
		answered[string(msg.ID)] = msg.Result != nil
		if string(msg.ID) == "3" && msg.Result != nil {
			made = msg.Result.StructuredContent.ID
		}
	}
	for _, id := range []string{"1", "2", "3", `"four"`} {
		if !answered[id] {
			t.Errorf("no answer to request %s; got:\n%s", id, out)
		}
	}
	if parseErrors != 1 {
		t.Errorf("%d parse errors for the one line that is not JSON, want 1:\n%s", parseErrors, out)
	}
	if made == "" {
		t.Fatalf("create_sandbox gave no sandbox id:\n%s", out)
	}
	if _, err := smolvm.FromID(ctx, made, smolvm.WithHome(testEnv.home)); !errors.Is(err, smolvm.ErrNotFound) {
		t.Errorf("sandbox %s after the session: %v, want it deleted", made, err)
	}
}
