package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// TestExecArgv runs argvs through the in-process agent: arguments arrive
// verbatim, cwd, user and env apply, and a program that is not there is
// an error, not exit 127.
func TestExecArgv(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	tricky := []string{"a b", `"quoted"`, "'single'", "$(touch " + dir + "/pwned)", "`id`", "$HOME", "", "x\ny", "*"}

	tests := []struct {
		name       string
		req        guest.ExecRequest
		wantStdout string
		wantCode   int
		wantErr    error
	}{
		{name: "verbatim", req: guest.ExecRequest{Argv: append([]string{"printf", "[%s]\n"}, tricky...)},
			wantStdout: "[a b]\n[\"quoted\"]\n['single']\n[$(touch " + dir + "/pwned)]\n[`id`]\n[$HOME]\n[]\n[x\ny]\n[*]\n"},
		{name: "exit code", req: guest.ExecRequest{Argv: []string{"false"}}, wantCode: 1},
		{name: "absolute path", req: guest.ExecRequest{Argv: []string{"/bin/echo", "hi"}}, wantStdout: "hi\n"},
		{name: "cwd", req: guest.ExecRequest{Argv: []string{"pwd"}, Dir: dir}, wantStdout: dir + "\n"},
		{name: "env", req: guest.ExecRequest{Argv: []string{"printenv", "FOO"}, Env: map[string]string{"FOO": "x y"}}, wantStdout: "x y\n"},
		{name: "user by name", req: guest.ExecRequest{Argv: []string{"id", "-un"}, User: "nobody"}, wantStdout: "nobody\n"},
		{name: "user by uid", req: guest.ExecRequest{Argv: []string{"id", "-u"}, User: "4242"}, wantStdout: "4242\n"},
		{name: "shell form with cwd", req: guest.ExecRequest{Command: "pwd; echo $0", Dir: dir}, wantStdout: dir + "\n/bin/sh\n"},
		{name: "missing program", req: guest.ExecRequest{Argv: []string{"no-such-program-xyz"}}, wantErr: fs.ErrNotExist},
		{name: "missing absolute", req: guest.ExecRequest{Argv: []string{"/nope/prog"}}, wantErr: fs.ErrNotExist},
		{name: "missing dir", req: guest.ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"}, wantErr: fs.ErrNotExist},
		{name: "not executable", req: guest.ExecRequest{Argv: []string{"/etc/passwd"}}, wantErr: fs.ErrPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			tt.req.Stdout, tt.req.Stderr = &out, &errb
			code, err := c.Exec(ctx, tt.req)
			if tt.wantErr != nil {
				var ce *guest.CommandError
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) {
					t.Fatalf("err = %v (code %d, stderr %q), want a *CommandError matching %v", err, code, errb.String(), tt.wantErr)
				}
				return
			}
			if err != nil || code != tt.wantCode || out.String() != tt.wantStdout {
				t.Fatalf("= %d, %v, stdout %q (stderr %q); want %d, %q", code, err, out.String(), errb.String(), tt.wantCode, tt.wantStdout)
			}
		})
	}
	if _, err := os.Stat(dir + "/pwned"); err == nil {
		t.Fatal("an argument was run by a shell")
	}
	// The connection still works after refused commands.
	if code, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"true"}}); err != nil || code != 0 {
		t.Fatalf("after errors: %d, %v", code, err)
	}
}

// TestProcs drives background processes through the in-process agent.
func TestProcs(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("exit code and output kept", func(t *testing.T) {
		p, err := c.ProcStart(ctx, guest.ProcSpec{Shell: "echo out; echo err >&2; exit 7"}, false)
		if err != nil {
			t.Fatal(err)
		}
		in, err := c.ProcWait(ctx, p.ID)
		if err != nil || in.Running || in.Exit == nil || in.Exit.ExitCode != 7 || in.Exit.Signal != "" {
			t.Fatalf("wait = %+v, %v; want exit 7", in, err)
		}
		var out, errb bytes.Buffer
		if _, err := c.ProcAttach(ctx, p.ID, &out, &errb, guest.AttachOptions{Follow: true}); err != nil {
			t.Fatal(err)
		}
		if out.String() != "out\n" || errb.String() != "err\n" {
			t.Fatalf("attach: stdout %q stderr %q", out.String(), errb.String())
		}
		for _, tc := range []struct{ offset, want int64 }{{in.OutputBytes - 2, 2}, {in.OutputBytes, 0}, {in.OutputBytes + 100, 0}} {
			var n countWriter
			if _, err := c.ProcAttach(ctx, p.ID, &n, &n, guest.AttachOptions{Offset: tc.offset, Follow: true}); err != nil || n.n != tc.want {
				t.Errorf("attach from %d: %d bytes, %v; want %d", tc.offset, n.n, err, tc.want)
			}
		}
		if _, err := c.ProcSignal(ctx, p.ID, "TERM"); err == nil {
			t.Fatal("signalling an exited process worked")
		}
	})

	t.Run("stdin, attach from a new connection, TERM", func(t *testing.T) {
		p, err := c.ProcStart(ctx, guest.ProcSpec{Argv: []string{"sh", "-c", `echo ready; while read l; do echo "got $l"; done; sleep 1000`}}, true)
		if err != nil {
			t.Fatal(err)
		}
		c2 := dial(t, g)
		if _, err := c2.ProcStdin(ctx, p.ID, []byte("one\n"), false); err != nil {
			t.Fatal(err)
		}
		// Follow until "got one" arrives, then detach.
		actx, acancel := context.WithCancel(ctx)
		w := &watchWriter{want: "got one\n", hit: acancel}
		_, err = c2.ProcAttach(actx, p.ID, w, nil, guest.AttachOptions{Follow: true})
		acancel()
		if !errors.Is(err, context.Canceled) || w.String() != "ready\ngot one\n" {
			t.Fatalf("attach = %v, output %q", err, w.String())
		}
		if _, err := c2.ProcStdin(ctx, p.ID, nil, true); err != nil {
			t.Fatal(err)
		}
		list, err := c.Procs(ctx)
		if err != nil || !hasRunning(list, p.ID) {
			t.Fatalf("list = %+v, %v; want %s running", list, err, p.ID)
		}
		if _, err := c2.ProcSignal(ctx, p.ID, "term"); err != nil {
			t.Fatal(err)
		}
		in, err := c.ProcWait(ctx, p.ID)
		if err != nil || in.Exit == nil || in.Exit.Signal != "TERM" || in.Exit.ExitCode != 128+15 {
			t.Fatalf("wait = %+v, %v; want signal TERM", in.Exit, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if _, err := c.Proc(ctx, "p999"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("unknown id: %v", err)
		}
		if _, err := c.ProcStart(ctx, guest.ProcSpec{Argv: []string{"no-such-prog"}}, false); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("missing program: %v", err)
		}
		p, err := c.ProcStart(ctx, guest.ProcSpec{Argv: []string{"sleep", "1000"}}, false)
		if err != nil {
			t.Fatal(err)
		}
		var ce *guest.CommandError
		if _, err := c.ProcSignal(ctx, p.ID, "NOPE"); !errors.As(err, &ce) || ce.Kind != "invalid" {
			t.Fatalf("bad signal: %v", err)
		}
		if _, err := c.ProcStdin(ctx, p.ID, []byte("x"), false); !errors.As(err, &ce) || ce.Kind != "invalid" {
			t.Fatalf("stdin without a pipe: %v", err)
		}
		if _, err := c.ProcSignal(ctx, p.ID, "9"); err != nil {
			t.Fatal(err)
		}
		if in, err := c.ProcWait(ctx, p.ID); err != nil || in.Exit.Signal != "KILL" {
			t.Fatalf("wait = %+v, %v", in, err)
		}
	})

	// A process writing as fast as it can for ever: the agent keeps its
	// last MiB, says how much it dropped, and list and attach still work.
	t.Run("flood", func(t *testing.T) {
		p, err := c.ProcStart(ctx, guest.ProcSpec{Argv: []string{"yes", strings.Repeat("y", 100)}}, false)
		if err != nil {
			t.Fatal(err)
		}
		defer c.ProcSignal(ctx, p.ID, "KILL")
		for {
			in, err := c.Proc(ctx, p.ID)
			if err != nil {
				t.Fatal(err)
			}
			if in.OutputBytes > 8<<20 {
				if kept := in.OutputBytes - in.Dropped; in.Dropped == 0 || kept > 1<<20 {
					t.Fatalf("output %d, dropped %d: keeps %d, want at most 1 MiB", in.OutputBytes, in.Dropped, kept)
				}
				break
			}
			if err := ctx.Err(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Procs(ctx); err != nil {
			t.Fatalf("list during the flood: %v", err)
		}
		var dropped int64
		var out countWriter
		if _, err := c.ProcAttach(ctx, p.ID, &out, nil, guest.AttachOptions{Dropped: func(n int64) { dropped += n }}); err != nil {
			t.Fatal(err)
		}
		if dropped == 0 || out.n > 1<<20 || out.n == 0 {
			t.Fatalf("attach without follow: %d bytes, %d dropped; want at most 1 MiB and a drop", out.n, dropped)
		}
	})
}

func hasRunning(list []guest.ProcInfo, id string) bool {
	for _, p := range list {
		if p.ID == id && p.Running {
			return true
		}
	}
	return false
}

// watchWriter calls hit once what was written ends with want.
type watchWriter struct {
	syncBuffer
	want string
	hit  func()
}

func (w *watchWriter) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.HasSuffix(w.String(), w.want) {
		w.hit()
	}
	return n, err
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
