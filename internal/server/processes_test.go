package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// testProcesses drives the process routes and argv exec on TestVM's VM.
func testProcesses(t *testing.T, ctx context.Context, ts *testServer, id string) {
	base := "/v1/vms/" + id + "/processes"

	t.Run("argv exec", func(t *testing.T) {
		res, r := execJSON(t, ctx, ts, id, api.Exec{Argv: []string{"sh", "-c", `pwd; printf '[%s]' "$1"`, "-", "a $(b) 'c'"}, Dir: "/tmp", User: "nobody"})
		if r.status != 200 || str(res.Stdout) != "/tmp\n[a $(b) 'c']" {
			t.Errorf("argv exec: %d %s", r.status, r.body)
		}
		_, r = execJSON(t, ctx, ts, id, api.Exec{Argv: []string{"no-such-program"}})
		if r.status != 404 || r.errorBody(t).Code != api.CodeNotFound {
			t.Errorf("missing program: %d %s", r.status, r.body)
		}
		_, r = execJSON(t, ctx, ts, id, api.Exec{Argv: []string{"true"}, Cmd: "true"})
		if r.status != 400 {
			t.Errorf("argv and cmd: %d %s", r.status, r.body)
		}
	})

	t.Run("exec ws signal", func(t *testing.T) {
		// The WebSocket's signal reaches the command, which may catch it.
		w := dialWS(t, ctx, ts, "/v1/vms/"+id+"/exec/ws")
		w.send(api.Exec{Cmd: "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.1; done"})
		if !w.readUntil("ready", 20*time.Second) {
			t.Fatalf("output %q", w.output.String())
		}
		w.send(api.Event{Type: "signal", Signal: "SIGTERM"})
		if ev := w.wait(); ev.Type != "exit" || ev.ExitCode == nil || *ev.ExitCode != 5 || !strings.Contains(w.output.String(), "got-term") {
			t.Errorf("after TERM: %+v, output %q", ev, w.output.String())
		}
	})

	var p smolvm.ProcessInfo
	r := ts.do(t, ctx, "POST", base, api.StartProcess{Cmd: `trap 'exit 9' TERM; echo up; read l; echo "in=$l"; while :; do sleep 0.1; done`, Stdin: true})
	decodeJSON(t, r, 201, &p)
	conforms(t, "ProcessInfo", r.body)
	if p.ID == "" || !p.Running || !p.StdinOpen {
		t.Fatalf("started %+v", p)
	}
	pp := base + "/" + p.ID

	var l api.ProcessList
	r = ts.do(t, ctx, "GET", base, nil)
	decodeJSON(t, r, 200, &l)
	conforms(t, "ProcessList", r.body)
	if len(l.Processes) == 0 {
		t.Fatalf("list: %s", r.body)
	}
	r = ts.do(t, ctx, "POST", pp+"/stdin", api.ProcessStdin{Data: "hello\n", Close: true})
	var afterStdin smolvm.ProcessInfo
	decodeJSON(t, r, 200, &afterStdin)
	if afterStdin.StdinOpen {
		t.Errorf("stdin still open after close: %s", r.body)
	}
	// Once it has read its input (and so set its trap), TERM.
	waitFor(t, ctx, "the process's output", func() bool {
		var in smolvm.ProcessInfo
		decodeJSON(t, ts.do(t, ctx, "GET", pp, nil), 200, &in)
		return in.OutputBytes >= int64(len("up\nin=hello\n"))
	})
	r = ts.do(t, ctx, "POST", pp+"/signal", api.Signal{Signal: "TERM"})
	decodeJSON(t, r, 200, nil)
	r = ts.do(t, ctx, "POST", pp+"/wait", nil)
	p = smolvm.ProcessInfo{}
	decodeJSON(t, r, 200, &p)
	conforms(t, "ProcessInfo", r.body)
	if p.Running || p.Exit == nil || p.Exit.ExitCode != 9 {
		t.Errorf("after wait: %s", r.body)
	}
	if r := ts.do(t, ctx, "POST", pp+"/signal", nil); r.status != 409 || r.errorBody(t).Code != api.CodeExited {
		t.Errorf("signal after exit: %d %s", r.status, r.body)
	}
	r = ts.do(t, ctx, "GET", pp+"/attach?follow=true", nil)
	if r.status != 200 {
		t.Fatalf("attach: %d %s", r.status, r.body)
	}
	var out bytes.Buffer
	var end *api.ProcessEvent
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		conforms(t, "ProcessEvent", sc.Bytes())
		var ev api.ProcessEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case "stdout":
			b, _ := base64.StdEncoding.DecodeString(ev.DataB64)
			out.Write(b)
		case "end":
			end = &ev
		}
	}
	if out.String() != "up\nin=hello\n" || end == nil || end.Process.Exit.ExitCode != 9 {
		t.Errorf("attach: %q, end %+v", out.String(), end)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
	}{
		{"GET", base + "/p999999", nil, 404},
		{"GET", base + "/p999999/attach", nil, 404},
		{"POST", base, api.StartProcess{}, 400},
		{"POST", base, api.StartProcess{Argv: []string{"no-such-program"}}, 404},
		{"POST", pp + "/signal", api.Signal{Signal: "NOPE"}, 400},
		{"GET", pp + "/attach?offset=-1", nil, 400},
		{"POST", pp + "/stdin", api.ProcessStdin{DataB64: "!!"}, 400},
	} {
		if r := ts.do(t, ctx, tc.method, tc.path, tc.body); r.status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, r.status, r.body, tc.status)
		}
	}
}
