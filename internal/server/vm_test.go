package server_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// TestVM drives one real VM through the API: lifecycle, exec in all its
// forms, files, env, ports, logs, snapshots and fork.
func TestVM(t *testing.T) {
	requireVM(t)
	ts := startServer(t, server.Config{})
	ctx := testContext(t, 8*time.Minute)
	const id = "srv1"
	t.Cleanup(func() { deleteVM(t, id) })

	var info smolvm.VMInfo
	r := ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: id, Start: true, Env: map[string]string{"AT_CREATE": "yes"}})
	decodeJSON(t, r, 201, &info)
	conforms(t, "VMInfo", r.body)
	if info.ID != id || info.State != smolvm.StateRunning {
		t.Fatalf("created %s in state %s", info.ID, info.State)
	}
	t.Run("AlreadyExists", func(t *testing.T) {
		r := ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: id})
		if r.status != 409 || r.errorBody(t).Code != api.CodeAlreadyExists {
			t.Errorf("second create: %d %s", r.status, r.body)
		}
	})
	t.Run("List", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			want  bool
		}{{"", true}, {"?state=running", true}, {"?state=stopped", false}, {"?image=nope", false}} {
			var l api.VMList
			r := ts.do(t, ctx, "GET", "/v1/vms"+tc.query, nil)
			decodeJSON(t, r, 200, &l)
			conforms(t, "VMList", r.body)
			found := false
			for _, vm := range l.VMs {
				found = found || vm.ID == id
			}
			if found != tc.want {
				t.Errorf("GET /v1/vms%s: %s listed = %v, want %v", tc.query, id, found, tc.want)
			}
		}
		var got smolvm.VMInfo
		decodeJSON(t, ts.do(t, ctx, "GET", "/v1/vms/"+id, nil), 200, &got)
		if got.ID != id || got.State != smolvm.StateRunning || got.PID != info.PID {
			t.Errorf("info %+v", got)
		}
	})
	t.Run("Exec", func(t *testing.T) { testExec(t, ctx, ts, id) })
	t.Run("ExecSecrets", func(t *testing.T) { testExecSecrets(t, ctx, ts, id) })
	t.Run("Concurrent", func(t *testing.T) {
		// A fresh server: the requests race for the first handle, too.
		fresh := startServer(t, server.Config{})
		errs := make(chan error, 8)
		for i := range 8 {
			go func() {
				res, r := execJSON(t, ctx, fresh, id, api.Exec{Cmd: fmt.Sprintf("echo %d", i)})
				if r.status != 200 || str(res.Stdout) != fmt.Sprintf("%d\n", i) {
					errs <- fmt.Errorf("exec %d: %d %s", i, r.status, r.body)
					return
				}
				errs <- nil
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("ExecStream", func(t *testing.T) { testExecStream(t, ctx, ts, id) })
	t.Run("ExecWebSocket", func(t *testing.T) { testExecWS(t, ctx, ts, id) })
	t.Run("Processes", func(t *testing.T) { testProcesses(t, ctx, ts, id) })
	t.Run("Files", func(t *testing.T) { testFiles(t, ctx, ts, id) })
	t.Run("FS", func(t *testing.T) { testGuestFS(t, ctx, ts, id) })
	t.Run("Env", func(t *testing.T) { testEnvVars(t, ctx, ts, id) })
	t.Run("Policy", func(t *testing.T) { testPolicy(t, ctx, ts, id) })
	t.Run("Ports", func(t *testing.T) { testPorts(t, ctx, ts, id) })
	t.Run("Logs", func(t *testing.T) { testLogs(t, ctx, ts, id) })
	t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, ctx, ts, id) })
	t.Run("Snapshots", func(t *testing.T) { testSnapshots(t, ctx, ts, id) })
	t.Run("OtherProcess", func(t *testing.T) { testOtherProcess(t, ctx, ts, id) })

	if r := ts.do(t, ctx, "DELETE", "/v1/vms/"+id, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, p := range []string{"/v1/vms/" + id, "/v1/vms/" + id + "/env"} {
		if r := ts.do(t, ctx, "GET", p, nil); r.status != 404 || r.errorBody(t).Code != api.CodeNotFound {
			t.Errorf("GET %s after delete: %d %s", p, r.status, r.body)
		}
	}
	if r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec", api.Exec{Cmd: "true"}); r.status != 404 {
		t.Errorf("exec after delete: %d %s", r.status, r.body)
	}
}

// deleteVM removes a VM a test made, whatever state the test left it in.
func deleteVM(t *testing.T, id string) {
	vm, err := smolvm.FromID(context.Background(), id, smolvm.WithHome(testEnv.home))
	if errors.Is(err, smolvm.ErrNotFound) {
		return
	}
	if err != nil {
		t.Errorf("cleanup %s: %v", id, err)
		return
	}
	if err := vm.Delete(context.Background()); err != nil {
		t.Errorf("cleanup %s: %v", id, err)
	}
}

func execJSON(t *testing.T, ctx context.Context, ts *testServer, id string, req api.Exec) (api.ExecResult, response) {
	t.Helper()
	var res api.ExecResult
	r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec", req)
	if r.status == 200 {
		conforms(t, "ExecResult", r.body)
		json.Unmarshal(r.body, &res)
	}
	return res, r
}

func mustExec(t *testing.T, ctx context.Context, ts *testServer, id, cmd string) api.ExecResult {
	t.Helper()
	res, r := execJSON(t, ctx, ts, id, api.Exec{Cmd: cmd})
	if r.status != 200 {
		t.Fatalf("exec %q: %d %s", cmd, r.status, r.body)
	}
	return res
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func testExec(t *testing.T, ctx context.Context, ts *testServer, id string) {
	res := mustExec(t, ctx, ts, id, "echo out; echo err >&2; echo $AT_CREATE; exit 3")
	if res.ExitCode != 3 || str(res.Stdout) != "out\nyes\n" || str(res.Stderr) != "err\n" {
		t.Errorf("exit %d stdout %q stderr %q", res.ExitCode, str(res.Stdout), str(res.Stderr))
	}
	res, _ = execJSON(t, ctx, ts, id, api.Exec{Cmd: "cat; echo \"$X\"", Stdin: "hello ", Env: map[string]string{"X": "per-command"}})
	if str(res.Stdout) != "hello per-command\n" {
		t.Errorf("stdin and env: %q", str(res.Stdout))
	}
	bin := []byte{0xff, 0x00, 0xfe, 'a'}
	res, _ = execJSON(t, ctx, ts, id, api.Exec{Cmd: "cat", StdinB64: base64.StdEncoding.EncodeToString(bin)})
	if got, _ := base64.StdEncoding.DecodeString(res.StdoutB64); !bytes.Equal(got, bin) || res.Stdout != nil {
		t.Errorf("binary output: stdout %v stdout_b64 %q", res.Stdout, res.StdoutB64)
	}
	res, _ = execJSON(t, ctx, ts, id, api.Exec{Cmd: "head -c 5000 /dev/zero | tr '\\0' x", OutputLimit: 1000})
	if len(str(res.Stdout)) != 1000 || !res.StdoutTruncated {
		t.Errorf("output limit: %d bytes, truncated %v", len(str(res.Stdout)), res.StdoutTruncated)
	}

	// A timeout is a 504, and the command is gone from the guest.
	start := time.Now()
	_, r := execJSON(t, ctx, ts, id, api.Exec{Cmd: "sleep 41; echo late", TimeoutSeconds: 1})
	if r.status != 504 || r.errorBody(t).Code != api.CodeTimeout {
		t.Errorf("timeout: %d %s", r.status, r.body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout of 1s answered after %v", d)
	}
	waitFor(t, ctx, "the timed-out command to end", func() bool {
		return str(mustExec(t, ctx, ts, id, "ps | grep -c '[s]leep 41'").Stdout) == "0\n"
	})
}

func testExecStream(t *testing.T, ctx context.Context, ts *testServer, id string) {
	events := func(r response) []api.Event {
		t.Helper()
		if r.status != 200 || r.header.Get("Content-Type") != api.NDJSON {
			t.Fatalf("stream: %d %q %s", r.status, r.header.Get("Content-Type"), r.body)
		}
		var evs []api.Event
		for _, line := range bytes.Split(bytes.TrimSpace(r.body), []byte("\n")) {
			conforms(t, "Event", line)
			var ev api.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			evs = append(evs, ev)
		}
		return evs
	}
	evs := events(ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec?stream=true", api.Exec{Cmd: "echo a; sleep 0.2; echo b >&2; exit 2"}))
	var out, errOut string
	for _, ev := range evs[:len(evs)-1] {
		b, _ := base64.StdEncoding.DecodeString(ev.DataB64)
		switch ev.Type {
		case "stdout":
			out += string(b)
		case "stderr":
			errOut += string(b)
		default:
			t.Errorf("event %+v before the last", ev)
		}
	}
	last := evs[len(evs)-1]
	if out != "a\n" || errOut != "b\n" || last.Type != "exit" || last.ExitCode == nil || *last.ExitCode != 2 {
		t.Errorf("stdout %q stderr %q last %+v", out, errOut, last)
	}
	evs = events(ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec?stream=true", api.Exec{Cmd: "sleep 42", TimeoutSeconds: 0.5}))
	if last := evs[len(evs)-1]; last.Type != "error" || last.Error == nil || last.Error.Code != api.CodeTimeout {
		t.Errorf("streamed timeout: last event %+v", last)
	}

	// A client that goes away ends its command.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, "POST", ts.base+"/v1/vms/"+id+"/exec?stream=true", strings.NewReader(`{"cmd":"echo started; sleep 43"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.Contains(line, `"stdout"`) {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, ctx, "the abandoned command to end", func() bool {
		return str(mustExec(t, ctx, ts, id, "ps | grep -c '[s]leep 43'").Stdout) == "0\n"
	})
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wsConn is a test's end of an exec or shell WebSocket.
type wsConn struct {
	t      *testing.T
	ctx    context.Context
	c      *websocket.Conn
	output strings.Builder
	exit   *api.Event
}

func dialWS(t *testing.T, ctx context.Context, ts *testServer, path string) *wsConn {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws://smolvm"+path, &websocket.DialOptions{HTTPClient: ts.client})
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", path, err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &wsConn{t: t, ctx: ctx, c: c}
}

func (w *wsConn) send(ev any) {
	w.t.Helper()
	b, _ := json.Marshal(ev)
	if err := w.c.Write(w.ctx, websocket.MessageText, b); err != nil {
		w.t.Fatalf("send %s: %v", b, err)
	}
}

// readUntil reads events until the output holds want (or the stream ends).
func (w *wsConn) readUntil(want string, d time.Duration) bool {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, d)
	defer cancel()
	for !strings.Contains(w.output.String(), want) {
		if w.exit != nil {
			return false
		}
		typ, data, err := w.c.Read(ctx)
		if err != nil {
			return false
		}
		if typ != websocket.MessageText {
			w.t.Fatalf("binary message from the server")
		}
		conforms(w.t, "Event", data)
		var ev api.Event
		json.Unmarshal(data, &ev)
		switch ev.Type {
		case "stdout", "stderr":
			b, _ := base64.StdEncoding.DecodeString(ev.DataB64)
			w.output.Write(b)
		case "exit", "error":
			w.exit = &ev
		default:
			w.t.Fatalf("event %s", data)
		}
	}
	return true
}

func (w *wsConn) wait() api.Event {
	w.t.Helper()
	w.readUntil("\x00never", 30*time.Second)
	if w.exit == nil {
		w.t.Fatalf("no exit event; output %q", w.output.String())
	}
	return *w.exit
}

func testExecWS(t *testing.T, ctx context.Context, ts *testServer, id string) {
	t.Run("Stdin", func(t *testing.T) {
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/exec/ws")
		w.send(api.Exec{Cmd: "cat; echo done >&2; exit 4"})
		w.send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString([]byte("abc"))})
		if err := w.c.Write(ctx, websocket.MessageBinary, []byte("\x00def")); err != nil {
			t.Fatal(err)
		}
		w.send(api.Event{Type: "eof"})
		ev := w.wait()
		if ev.Type != "exit" || *ev.ExitCode != 4 || w.output.String() != "abcdefdone\n" {
			t.Errorf("exit %+v output %q", ev, w.output.String())
		}
	})
	t.Run("TTYResize", func(t *testing.T) {
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/exec/ws")
		w.send(api.Exec{Cmd: "stty size; while read x; do stty size; done", TTY: true, Width: 100, Height: 30})
		if !w.readUntil("30 100", 20*time.Second) {
			t.Fatalf("no initial size; output %q", w.output.String())
		}
		w.send(api.Event{Type: "resize", Width: 120, Height: 40})
		resized := false
		for i := 0; i < 50 && !resized; i++ {
			w.send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString([]byte("\n"))})
			resized = w.readUntil("40 120", 200*time.Millisecond)
		}
		if !resized {
			t.Fatalf("resize not seen; output %q", w.output.String())
		}
		// A signal reaches the command, which it kills: its exit says so.
		w.send(api.Event{Type: "signal", Signal: "KILL"})
		if ev := w.wait(); ev.Type != "exit" || ev.ExitCode == nil || *ev.ExitCode != 128+9 {
			t.Errorf("after the signal: %+v", ev)
		}
		waitFor(t, ctx, "the signalled command to end", func() bool {
			return str(mustExec(t, ctx, ts, id, "ps | grep -c '[w]hile read x'").Stdout) == "0\n"
		})
	})
	t.Run("Shell", func(t *testing.T) {
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/shell/ws?term=vt100&width=90&height=20")
		w.send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString([]byte("echo TERM=$TERM; stty size\n"))})
		if !w.readUntil("20 90", 20*time.Second) || !strings.Contains(w.output.String(), "TERM=vt100") {
			t.Fatalf("shell output %q", w.output.String())
		}
		w.send(api.Event{Type: "resize", Width: 132, Height: 43})
		resized := false
		for i := 0; i < 50 && !resized; i++ {
			w.send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString([]byte("stty size\n"))})
			resized = w.readUntil("43 132", 200*time.Millisecond)
		}
		if !resized {
			t.Fatalf("resize not seen; output %q", w.output.String())
		}
		w.send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString([]byte("exit 7\n"))})
		if ev := w.wait(); ev.Type != "exit" || *ev.ExitCode != 7 {
			t.Errorf("shell exit %+v", ev)
		}
	})
	t.Run("BadFirstMessage", func(t *testing.T) {
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/exec/ws")
		w.send(map[string]any{"cmd": "true", "bogus": 1})
		if ev := w.wait(); ev.Type != "error" || ev.Error.Code != api.CodeInvalid || ev.Error.Field != "bogus" {
			t.Errorf("bad Exec: %+v", ev)
		}
	})
	t.Run("ClientGone", func(t *testing.T) {
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/exec/ws")
		w.send(api.Exec{Cmd: "echo up; sleep 44"})
		if !w.readUntil("up", 20*time.Second) {
			t.Fatal("no output")
		}
		w.c.CloseNow()
		waitFor(t, ctx, "the command of a closed WebSocket to end", func() bool {
			return str(mustExec(t, ctx, ts, id, "ps | grep -c '[s]leep 44'").Stdout) == "0\n"
		})
	})
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func readTar(t *testing.T, b []byte) map[string]tarEntry {
	t.Helper()
	out := map[string]tarEntry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		body, _ := io.ReadAll(tr)
		out[h.Name] = tarEntry{name: h.Name, body: string(body), link: h.Linkname, typ: h.Typeflag, mode: h.Mode}
	}
}

func testFiles(t *testing.T, ctx context.Context, ts *testServer, id string) {
	files := "/v1/vms/" + id + "/files?path="
	data := make([]byte, 3<<20)
	rand.Read(data)
	if r := ts.do(t, ctx, "PUT", files+"/tmp/up/data.bin", bytes.NewReader(data), api.FileModeHeader, "0600"); r.status != 204 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	r := ts.do(t, ctx, "GET", files+"/tmp/up/data.bin", nil)
	if r.status != 200 || !bytes.Equal(r.body, data) || r.header.Get(api.FileModeHeader) != "0600" {
		t.Errorf("download: %d, %d bytes (equal %v), mode %q", r.status, len(r.body), bytes.Equal(r.body, data), r.header.Get(api.FileModeHeader))
	}
	if r := ts.do(t, ctx, "GET", files+"/tmp/nothing-here", nil); r.status != 404 || r.errorBody(t).Code != api.CodeNotFound {
		t.Errorf("missing file: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "GET", files+"relative", nil); r.status != 400 {
		t.Errorf("relative path: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "PUT", files+"/tmp/empty", ""); r.status != 204 {
		t.Errorf("empty upload: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "GET", files+"/tmp/empty", nil); r.status != 200 || len(r.body) != 0 {
		t.Errorf("empty download: %d %q", r.status, r.body)
	}

	t.Run("Tree", func(t *testing.T) {
		tree := makeTar(t, []tarEntry{
			{name: "./", typ: tar.TypeDir, mode: 0o755},
			{name: "a.txt", typ: tar.TypeReg, body: "A"},
			{name: "sub/", typ: tar.TypeDir, mode: 0o750},
			{name: "sub/run.sh", typ: tar.TypeReg, body: "#!/bin/sh\necho hi\n", mode: 0o755},
			{name: "sub/link", typ: tar.TypeSymlink, link: "../a.txt"},
		})
		if r := ts.do(t, ctx, "PUT", files+"/tmp/tree", bytes.NewReader(tree), "Content-Type", api.Tar); r.status != 204 {
			t.Fatalf("tree upload: %d %s", r.status, r.body)
		}
		if res := mustExec(t, ctx, ts, id, "/tmp/tree/sub/run.sh; cat /tmp/tree/sub/link"); str(res.Stdout) != "hi\nA" {
			t.Errorf("unpacked tree: %q %q", str(res.Stdout), str(res.Stderr))
		}
		r := ts.do(t, ctx, "GET", files+"/tmp/tree", nil)
		if r.status != 200 || r.header.Get("Content-Type") != api.Tar {
			t.Fatalf("tree download: %d %q", r.status, r.header.Get("Content-Type"))
		}
		got := readTar(t, r.body)
		want := map[string]tarEntry{
			"a.txt":      {typ: tar.TypeReg, body: "A", mode: 0o644},
			"sub/":       {typ: tar.TypeDir, mode: 0o750},
			"sub/run.sh": {typ: tar.TypeReg, body: "#!/bin/sh\necho hi\n", mode: 0o755},
			"sub/link":   {typ: tar.TypeSymlink, link: "../a.txt"},
		}
		if len(got) != len(want) {
			t.Errorf("tree entries %v, want %v", got, want)
		}
		for name, w := range want {
			g := got[name]
			if g.typ != w.typ || g.body != w.body || g.link != w.link || (w.mode != 0 && g.mode != w.mode) {
				t.Errorf("%s: got %+v, want %+v", name, g, w)
			}
		}
	})

	t.Run("HostileUpload", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			entries []tarEntry
		}{
			{"dotdot", []tarEntry{{name: "ok", typ: tar.TypeReg, body: "x"}, {name: "../escaped", typ: tar.TypeReg, body: "x"}}},
			{"absolute", []tarEntry{{name: "/tmp/escaped", typ: tar.TypeReg, body: "x"}}},
			{"through own symlink", []tarEntry{{name: "l", typ: tar.TypeSymlink, link: "/tmp"}, {name: "l/escaped", typ: tar.TypeReg, body: "x"}}},
			{"hard link", []tarEntry{{name: "h", typ: tar.TypeLink, link: "/etc/shadow"}}},
			{"device", []tarEntry{{name: "d", typ: tar.TypeChar}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := ts.do(t, ctx, "PUT", files+"/tmp/hostile", bytes.NewReader(makeTar(t, tc.entries)), "Content-Type", api.Tar)
				if r.status != 400 || r.errorBody(t).Code != api.CodeInvalid {
					t.Errorf("%d %s, want 400 invalid", r.status, r.body)
				}
				if res := mustExec(t, ctx, ts, id, "ls -a /tmp | grep -c -e hostile -e escaped -e '^.smolvm-'"); str(res.Stdout) != "0\n" {
					t.Errorf("a refused archive left files: %s", str(mustExec(t, ctx, ts, id, "ls -la /tmp").Stdout))
				}
			})
		}
		r := ts.do(t, ctx, "PUT", files+"/tmp/hostile", "not a tar at all, just text", "Content-Type", api.Tar)
		if r.status != 400 {
			t.Errorf("garbage tar: %d %s", r.status, r.body)
		}
	})

	t.Run("HostileGuestTree", func(t *testing.T) {
		// What the guest puts in a tree must not reach outside it on the
		// host's side: links stay links, devices and FIFOs are left out,
		// setuid is dropped.
		mustExec(t, ctx, ts, id, "mkdir -p /tmp/evil && cd /tmp/evil && ln -sf /etc/shadow shadow && ln -sf ../../../../../etc up && "+
			"mkfifo fifo && echo s > suid && chmod 4755 suid && mknod null c 1 3 && mkdir -m 1777 pub")
		r := ts.do(t, ctx, "GET", files+"/tmp/evil", nil)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		got := readTar(t, r.body)
		if e := got["shadow"]; e.typ != tar.TypeSymlink || e.link != "/etc/shadow" || e.body != "" {
			t.Errorf("shadow: %+v", e)
		}
		if e := got["up"]; e.typ != tar.TypeSymlink || e.body != "" {
			t.Errorf("up: %+v", e)
		}
		if e := got["suid"]; e.typ != tar.TypeReg || e.mode != 0o755 {
			t.Errorf("suid: %+v, want mode 0755", e)
		}
		// A directory open to all in the guest is not one on the host.
		if e := got["pub/"]; e.typ != tar.TypeDir || e.mode != 0o755 {
			t.Errorf("pub/: %+v, want a directory of mode 0755", e)
		}
		for _, n := range []string{"fifo", "null"} {
			if _, ok := got[n]; ok {
				t.Errorf("special file %s in the tar", n)
			}
		}
		// The FIFO itself is refused, not opened (which would hang).
		if r := ts.do(t, ctx, "GET", files+"/tmp/evil/fifo", nil); r.status != 400 {
			t.Errorf("GET a FIFO: %d %s", r.status, r.body)
		}
	})

	t.Run("UploadLimit", func(t *testing.T) {
		small := startServer(t, server.Config{MaxUpload: 1000})
		for _, body := range []io.Reader{bytes.NewReader(make([]byte, 2000)), io.MultiReader(bytes.NewReader(make([]byte, 2000)))} {
			r := small.do(t, ctx, "PUT", files+"/tmp/toobig", body)
			if r.status != 413 || r.errorBody(t).Code != api.CodeTooLarge {
				t.Errorf("over the limit: %d %s", r.status, r.body)
			}
		}
		big := makeTar(t, []tarEntry{{name: "f", typ: tar.TypeReg, body: strings.Repeat("x", 5000)}})
		if r := small.do(t, ctx, "PUT", files+"/tmp/toobig-tree", io.MultiReader(bytes.NewReader(big)), "Content-Type", api.Tar); r.status != 413 {
			t.Errorf("tar over the limit: %d %s", r.status, r.body)
		}
		if res := mustExec(t, ctx, ts, id, "ls -a /tmp | grep -c -e toobig -e '^.smolvm-'"); str(res.Stdout) != "0\n" {
			t.Errorf("a refused upload left files: %s", str(mustExec(t, ctx, ts, id, "ls -la /tmp").Stdout))
		}
	})
}

func testEnvVars(t *testing.T, ctx context.Context, ts *testServer, id string) {
	var env api.Env
	r := ts.do(t, ctx, "PATCH", "/v1/vms/"+id+"/env", api.EnvPatch{Set: map[string]string{"FOO": "bar baz"}, Unset: []string{"AT_CREATE"}})
	decodeJSON(t, r, 200, &env)
	conforms(t, "Env", r.body)
	if env.Env["FOO"] != "bar baz" || env.Env["AT_CREATE"] != "" {
		t.Errorf("env after patch: %v", env.Env)
	}
	if res := mustExec(t, ctx, ts, id, `echo "$FOO|$AT_CREATE"`); str(res.Stdout) != "bar baz|\n" {
		t.Errorf("guest sees %q", str(res.Stdout))
	}
	if r := ts.do(t, ctx, "PATCH", "/v1/vms/"+id+"/env", api.EnvPatch{Set: map[string]string{"OK": "1", "BAD-NAME": "x"}}); r.status != 400 {
		t.Errorf("bad name: %d %s", r.status, r.body)
	}
	decodeJSON(t, ts.do(t, ctx, "GET", "/v1/vms/"+id+"/env", nil), 200, &env)
	if _, ok := env.Env["OK"]; ok {
		t.Errorf("a refused patch changed the env: %v", env.Env)
	}
}

func testPorts(t *testing.T, ctx context.Context, ts *testServer, id string) {
	var fwd smolvm.PortForward
	r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/ports", api.Expose{GuestPort: 22})
	decodeJSON(t, r, 201, &fwd)
	conforms(t, "PortForward", r.body)
	if fwd.GuestPort != 22 || fwd.HostPort == 0 {
		t.Errorf("forward %+v", fwd)
	}
	var l api.PortList
	decodeJSON(t, ts.do(t, ctx, "GET", "/v1/vms/"+id+"/ports", nil), 200, &l)
	if len(l.Ports) != 1 || l.Ports[0] != fwd {
		t.Errorf("ports %+v, want [%+v]", l.Ports, fwd)
	}
	if r := ts.do(t, ctx, "DELETE", fmt.Sprintf("/v1/vms/%s/ports?host_port=%d", id, fwd.HostPort), nil); r.status != 204 {
		t.Errorf("close: %d %s", r.status, r.body)
	}
	decodeJSON(t, ts.do(t, ctx, "GET", "/v1/vms/"+id+"/ports", nil), 200, &l)
	if len(l.Ports) != 0 {
		t.Errorf("ports after close: %+v", l.Ports)
	}
	if r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/ports", api.Expose{GuestPort: 70000}); r.status != 400 {
		t.Errorf("bad port: %d %s", r.status, r.body)
	}
}

func testLogs(t *testing.T, ctx context.Context, ts *testServer, id string) {
	mustExec(t, ctx, ts, id, "echo line-one > /dev/console; echo line-two > /dev/console; echo line-three > /dev/console")
	r := ts.do(t, ctx, "GET", "/v1/vms/"+id+"/logs", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") || !strings.Contains(string(r.body), "line-three") {
		t.Fatalf("logs: %d %q %d bytes", r.status, r.header.Get("Content-Type"), len(r.body))
	}
	r = ts.do(t, ctx, "GET", "/v1/vms/"+id+"/logs?tail=2", nil)
	if got := strings.Fields(string(r.body)); r.status != 200 || len(got) != 2 || got[1] != "line-three" {
		t.Errorf("tail=2: %d %q, want line-two and line-three", r.status, r.body)
	}
	// follow streams and ends when the client goes. No deadline: under
	// load the first bytes may take longer than any fixed one.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(fctx, "GET", ts.base+"/v1/vms/"+id+"/logs?follow=true", nil)
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 4096)
	n, err := resp.Body.Read(first)
	cancel()
	_, _ = io.ReadAll(resp.Body) // returns: the client went
	resp.Body.Close()
	if n == 0 {
		t.Errorf("follow: no bytes, ended before the client did (%v)", err)
	}
}

func testLifecycle(t *testing.T, ctx context.Context, ts *testServer, id string) {
	var info smolvm.VMInfo
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/"+id+"/pause", nil), 200, &info)
	if info.State != smolvm.StatePaused {
		t.Errorf("after pause: %s", info.State)
	}
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/"+id+"/resume", nil), 200, &info)
	if info.State != smolvm.StateRunning {
		t.Errorf("after resume: %s", info.State)
	}
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/"+id+"/stop", api.Stop{TimeoutSeconds: 5}), 200, &info)
	if info.State != smolvm.StateStopped {
		t.Errorf("after stop: %s", info.State)
	}
	if _, r := execJSON(t, ctx, ts, id, api.Exec{Cmd: "true"}); r.status != 409 || r.errorBody(t).Code != api.CodeNotRunning {
		t.Errorf("exec on a stopped VM: %d %s", r.status, r.body)
	}
	r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec?stream=true", api.Exec{Cmd: "true"})
	if r.status != 409 {
		t.Errorf("streamed exec on a stopped VM: %d %s", r.status, r.body)
	}
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/"+id+"/start", nil), 200, &info)
	if info.State != smolvm.StateRunning {
		t.Errorf("after start: %s", info.State)
	}
	if res := mustExec(t, ctx, ts, id, "echo $FOO"); str(res.Stdout) != "bar baz\n" {
		t.Errorf("after restart, env %q", str(res.Stdout))
	}
}

func testSnapshots(t *testing.T, ctx context.Context, ts *testServer, id string) {
	const snap, clone = "srvsnap", "srv2"
	t.Cleanup(func() {
		deleteVM(t, clone)
		smolvm.RemoveSnapshot(context.Background(), snap, smolvm.WithHome(testEnv.home))
	})
	mustExec(t, ctx, ts, id, "echo before-snapshot > /root/mark")
	var si smolvm.SnapshotInfo
	r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/snapshots", api.CreateSnapshot{Name: snap})
	decodeJSON(t, r, 201, &si)
	conforms(t, "SnapshotInfo", r.body)
	if si.Name != snap || si.SourceVM != id {
		t.Errorf("snapshot %+v", si)
	}
	conforms(t, "SnapshotList", ts.do(t, ctx, "GET", "/v1/snapshots", nil).body)
	decodeJSON(t, ts.do(t, ctx, "GET", "/v1/snapshots/"+snap, nil), 200, &si)

	var info smolvm.VMInfo
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: clone, FromSnapshot: snap}), 201, &info)
	if info.State != smolvm.StateRunning || info.FromSnapshot != snap {
		t.Errorf("clone %s %s from %q", info.ID, info.State, info.FromSnapshot)
	}
	if res := mustExec(t, ctx, ts, clone, "cat /root/mark; hostname"); str(res.Stdout) != "before-snapshot\n"+clone+"\n" {
		t.Errorf("clone sees %q", str(res.Stdout))
	}
	if r := ts.do(t, ctx, "DELETE", "/v1/snapshots/"+snap, nil); r.status != 409 || r.errorBody(t).Code != api.CodeInUse {
		t.Errorf("remove a snapshot in use: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "DELETE", "/v1/vms/"+clone, nil); r.status != 204 {
		t.Errorf("delete clone: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "DELETE", "/v1/snapshots/"+snap, nil); r.status != 204 {
		t.Errorf("remove snapshot: %d %s", r.status, r.body)
	}

	var kids api.VMList
	r = ts.do(t, ctx, "POST", "/v1/vms/"+id+"/fork", api.Fork{Count: 1})
	decodeJSON(t, r, 201, &kids)
	conforms(t, "VMList", r.body)
	if len(kids.VMs) != 1 {
		t.Fatalf("fork: %d children", len(kids.VMs))
	}
	kid := kids.VMs[0].ID
	t.Cleanup(func() { deleteVM(t, kid) })
	if res := mustExec(t, ctx, ts, kid, "cat /root/mark"); str(res.Stdout) != "before-snapshot\n" {
		t.Errorf("child sees %q", str(res.Stdout))
	}
	// Deleted while a command runs in it: the command's answer says the
	// VM is gone (409 not_running), not that something broke.
	running := make(chan response, 1)
	go func() {
		_, r := execJSON(t, ctx, ts, kid, api.Exec{Cmd: "sleep 60"})
		running <- r
	}()
	// Not a sleep: under load the command may take seconds to start, and
	// a delete before it would make its answer a 404.
	waitFor(t, ctx, "sleep 60 to run in the child", func() bool {
		return str(mustExec(t, ctx, ts, kid, "ps | grep -c '[s]leep 60'").Stdout) == "1\n"
	})
	if r := ts.do(t, ctx, "DELETE", "/v1/vms/"+kid, nil); r.status != 204 {
		t.Errorf("delete child: %d %s", r.status, r.body)
	}
	select {
	case r := <-running:
		if r.status != 409 || r.errorBody(t).Code != api.CodeNotRunning {
			t.Errorf("exec in a VM deleted meanwhile: %d %s", r.status, r.body)
		}
	case <-time.After(30 * time.Second):
		t.Error("exec in a VM deleted meanwhile did not end")
	}
}

// testOtherProcess: what another process (the CLI, the SDK) does to a VM
// the server has a handle on is seen by the next request, with no request
// failing for a stale handle.
func testOtherProcess(t *testing.T, ctx context.Context, ts *testServer, id string) {
	sdk := func() *smolvm.VM {
		vm, err := smolvm.FromID(ctx, id, smolvm.WithHome(testEnv.home), smolvm.WithAgent(testEnv.agent))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Close() })
		return vm
	}
	// Stopped through the API, started elsewhere.
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/"+id+"/stop", nil), 200, nil)
	if err := sdk().Start(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, ts, id, "true")
	// Stopped elsewhere: the API says so.
	if err := sdk().Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, r := execJSON(t, ctx, ts, id, api.Exec{Cmd: "true"}); r.status != 409 {
		t.Errorf("exec after a stop elsewhere: %d %s", r.status, r.body)
	}
	// Deleted and made again elsewhere, under the same id.
	if err := sdk().Delete(ctx); err != nil {
		t.Fatal(err)
	}
	vm, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: id}, smolvm.WithHome(testEnv.home), smolvm.WithAgent(testEnv.agent))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if res := mustExec(t, ctx, ts, id, "test -e /root/mark && echo old || echo new"); str(res.Stdout) != "new\n" {
		t.Errorf("exec reached %q, want the new VM", str(res.Stdout))
	}
}
