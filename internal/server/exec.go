package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// execOptions checks an Exec request and turns it into run options; stdin
// is read from the request (buffered exec) only when withStdin.
func execOptions(req api.Exec, withStdin bool) ([]smolvm.RunOption, error) {
	if len(req.Argv) > 0 {
		if req.Cmd != "" {
			return nil, invalid("argv", "give cmd (a shell command line) or argv (run without a shell), not both")
		}
		if req.Argv[0] == "" {
			return nil, invalid("argv", "argv[0] is empty: give the program to run")
		}
		if req.TTY {
			return nil, invalid("argv", "argv does not run on a terminal yet; give cmd with tty")
		}
	} else if strings.TrimSpace(req.Cmd) == "" {
		return nil, invalid("cmd", "cmd is empty: give the shell command line to run, such as \"uname -a\" (or argv)")
	}
	if strings.ContainsRune(req.Cmd, 0) {
		return nil, invalid("cmd", "cmd holds a NUL byte, which no shell command line can")
	}
	timeout, err := seconds("timeout_seconds", req.TimeoutSeconds)
	if err != nil {
		return nil, err
	}
	if err := smolvm.ValidateEnv(req.Env); err != nil {
		return nil, err
	}
	if req.OutputLimit < 0 || req.OutputLimit > smolvm.DefaultOutputLimit {
		return nil, invalid("output_limit", "output_limit %d: want 0 (the default, %d) up to %d bytes per stream; stream the output (?stream=true) for more",
			req.OutputLimit, smolvm.DefaultOutputLimit, smolvm.DefaultOutputLimit)
	}
	opts := []smolvm.RunOption{smolvm.WithTimeout(timeout), smolvm.WithOutputLimit(req.OutputLimit),
		smolvm.WithDir(req.Dir), smolvm.WithUser(req.User)}
	if len(req.Env) > 0 {
		opts = append(opts, smolvm.WithRunEnv(req.Env))
	}
	if err := smolvm.ValidateEnv(req.Secrets); err != nil {
		return nil, err
	}
	if len(req.Secrets) > 0 {
		opts = append(opts, smolvm.WithSecrets(req.Secrets))
	}
	if req.Stdin != "" && req.StdinB64 != "" {
		return nil, invalid("stdin_b64", "give stdin or stdin_b64, not both")
	}
	if (req.Stdin != "" || req.StdinB64 != "") && !withStdin {
		return nil, invalid("stdin", "stdin is streamed on the WebSocket; leave stdin and stdin_b64 out of its Exec message")
	}
	if req.StdinB64 != "" {
		b, err := base64.StdEncoding.DecodeString(req.StdinB64)
		if err != nil {
			return nil, invalid("stdin_b64", "stdin_b64 is not standard base64: %v", err)
		}
		opts = append(opts, smolvm.WithStdin(strings.NewReader(string(b))))
	} else if req.Stdin != "" {
		opts = append(opts, smolvm.WithStdin(strings.NewReader(req.Stdin)))
	}
	if req.TTY || req.Term != "" || req.Width != 0 || req.Height != 0 {
		if !withStdin {
			// The WebSocket handles these itself.
			return opts, nil
		}
		return nil, invalid("tty", "a terminal needs the exec WebSocket (GET /v1/vms/{id}/exec/ws)")
	}
	return opts, nil
}

// Result turns an SDK result into the wire's: text when it is UTF-8,
// base64 otherwise, byte for byte.
func Result(res *smolvm.CommandResult) api.ExecResult {
	out := api.ExecResult{ExitCode: res.ExitCode, StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated}
	if utf8.ValidString(res.Stdout) {
		out.Stdout = &res.Stdout
	} else {
		out.StdoutB64 = base64.StdEncoding.EncodeToString([]byte(res.Stdout))
	}
	if utf8.ValidString(res.Stderr) {
		out.Stderr = &res.Stderr
	} else {
		out.StderrB64 = base64.StdEncoding.EncodeToString([]byte(res.Stderr))
	}
	return out
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	stream := false
	if v := r.URL.Query().Get("stream"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, r, invalid("stream", "stream=%q: use true or false", v))
			return
		}
		stream = b
	}
	var req api.Exec
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	opts, err := execOptions(req, true)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if stream {
			return s.execStream(w, r, vm, req, opts)
		}
		began := time.Now()
		res, err := run(r, vm, req, opts)
		if err != nil {
			return err
		}
		// How long the command took in the SDK, so a client can tell the
		// API's own cost from the guest's (bench -api does).
		w.Header().Set("Server-Timing", fmt.Sprintf("run;dur=%.3f", float64(time.Since(began).Microseconds())/1000))
		writeJSON(w, http.StatusOK, Result(res))
		return nil
	})
}

// execStream runs cmd and answers with NDJSON events as the output comes.
// Once the 200 is sent, a failure is the stream's last event.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request, vm *smolvm.VM, req api.Exec, opts []smolvm.RunOption) error {
	if st := vm.Status(); st != smolvm.StateRunning {
		return &apiError{code: api.CodeNotRunning, err: smolvm.ErrNotRunning,
			msg: "vm " + strconv.Quote(vm.ID()) + " is " + string(st) + ", not running: start it first"}
	}
	var o smolvm.ExecOptions
	for _, opt := range opts {
		opt(&o)
	}
	ev := newEventWriter(w)
	w.Header().Set("Content-Type", api.NDJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	ev.flush()
	o.Stdout, o.Stderr = ev.data("stdout"), ev.data("stderr")
	code, err := execAny(r.Context(), vm, req, o)
	if err != nil {
		s.dropIfGone(vm, err)
		d := detail(err)
		ev.send(api.Event{Type: "error", Error: &d})
		return nil
	}
	ev.send(api.Event{Type: "exit", ExitCode: &code})
	return nil
}

// run runs req's command line or argv to completion.
func run(r *http.Request, vm *smolvm.VM, req api.Exec, opts []smolvm.RunOption) (*smolvm.CommandResult, error) {
	if len(req.Argv) == 0 {
		return vm.Run(r.Context(), req.Cmd, opts...)
	}
	var o smolvm.ExecOptions
	for _, opt := range opts {
		opt(&o)
	}
	c := vm.Command(r.Context(), req.Argv[0], req.Argv[1:]...)
	c.Dir, c.User, c.Env, c.Stdin, c.Timeout, c.OutputLimit = o.Dir, o.User, o.Env, o.Stdin, o.Timeout, o.OutputLimit
	return c.Run()
}

// execAny streams req's command line or argv.
func execAny(ctx context.Context, vm *smolvm.VM, req api.Exec, o smolvm.ExecOptions) (int, error) {
	if len(req.Argv) > 0 {
		return vm.ExecArgv(ctx, req.Argv, o)
	}
	return vm.Exec(ctx, req.Cmd, o)
}

// eventWriter writes NDJSON events, one at a time, each flushed.
type eventWriter struct {
	mu  sync.Mutex
	w   io.Writer
	rc  *http.ResponseController
	enc *json.Encoder
	err error
}

func newEventWriter(w http.ResponseWriter) *eventWriter {
	e := &eventWriter{w: w, rc: http.NewResponseController(w)}
	e.enc = json.NewEncoder(w)
	e.enc.SetEscapeHTML(false)
	return e
}

func (e *eventWriter) send(ev api.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if e.err = e.enc.Encode(ev); e.err == nil {
		e.err = e.rc.Flush()
	}
	return e.err
}

func (e *eventWriter) flush() { e.rc.Flush() }

// data is a writer whose writes become events of type typ.
func (e *eventWriter) data(typ string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		if err := e.send(api.Event{Type: typ, DataB64: base64.StdEncoding.EncodeToString(p)}); err != nil {
			return 0, err
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
