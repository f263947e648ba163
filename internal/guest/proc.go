package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ProcSpec is a background process to start in the guest: an argv run
// without a shell, or a shell command line.
type ProcSpec struct {
	Argv  []string          `json:"argv,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Dir   string            `json:"dir,omitempty"`
	User  string            `json:"user,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
}

// ProcExit is how a background process ended: a signal sets Signal (TERM,
// KILL...) and ExitCode to 128 plus its number.
type ProcExit struct {
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	CoreDumped bool   `json:"core_dumped,omitempty"`
}

// ProcInfo is the agent's record of a background process.
type ProcInfo struct {
	ID          string     `json:"id"`
	PID         int        `json:"pid"`
	Argv        []string   `json:"argv,omitempty"`
	Shell       string     `json:"shell,omitempty"`
	Dir         string     `json:"dir,omitempty"`
	User        string     `json:"user,omitempty"`
	Stdin       bool       `json:"stdin,omitempty"`
	StartedAt   time.Time  `json:"started_at"`
	Running     bool       `json:"running"`
	ExitedAt    *time.Time `json:"exited_at,omitempty"`
	Exit        *ProcExit  `json:"exit,omitempty"`
	OutputBytes int64      `json:"output_bytes"`
	Dropped     int64      `json:"dropped_bytes,omitempty"`
	Truncated   bool       `json:"command_truncated,omitempty"` // a list cut Argv/Shell
}

// procRequest and procReply are the agent's smolvm-proc wire format.
type procRequest struct {
	Op        string    `json:"op"`
	ID        string    `json:"id,omitempty"`
	Spec      *ProcSpec `json:"spec,omitempty"`
	KeepStdin bool      `json:"keep_stdin,omitempty"`
	Signal    string    `json:"signal,omitempty"`
	Data      []byte    `json:"data,omitempty"`
	Close     bool      `json:"close,omitempty"`
	Offset    int64     `json:"offset,omitempty"`
	Follow    bool      `json:"follow,omitempty"`
}

type procReply struct {
	Proc    *ProcInfo     `json:"proc,omitempty"`
	Procs   procList      `json:"procs,omitempty"`
	Error   *CommandError `json:"error,omitempty"`
	Stream  string        `json:"stream,omitempty"`
	Data    []byte        `json:"data,omitempty"`
	Offset  int64         `json:"offset,omitempty"`
	Dropped int64         `json:"dropped,omitempty"`
}

// Bounds on what the host reads back: a reply line holds at most one
// 32 KiB output chunk (in base64) or a list of the agent's 1024 records;
// anything longer is a hostile or broken guest.
const (
	maxProcLine = 8 << 20
	// MaxProcStdin is the most one ProcStdin call sends.
	MaxProcStdin = 1 << 20
	maxProcs     = 1024 // the agent's table
	maxProcArgs  = 4096 // the agent's bound on argv words
)

// procList and argvWords decode a JSON array one element at a time and
// stop at the agent's bound: decoded whole, a line of "{}," or "\"\","
// costs the host 20 to 300 times its size before it could be counted.
type (
	procList  []ProcInfo
	argvWords []string
)

func (l *procList) UnmarshalJSON(b []byte) error {
	return decodeBounded(b, (*[]ProcInfo)(l), maxProcs, "processes listed")
}

func (a *argvWords) UnmarshalJSON(b []byte) error {
	return decodeBounded(b, (*[]string)(a), maxProcArgs, "argv words in a record")
}

// UnmarshalJSON bounds the record's argv (see argvWords).
func (p *ProcInfo) UnmarshalJSON(b []byte) error {
	type plain ProcInfo // no UnmarshalJSON: no recursion
	w := struct {
		*plain
		Argv argvWords `json:"argv,omitempty"`
	}{plain: (*plain)(p)}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	p.Argv = w.Argv
	return nil
}

func decodeBounded[T any](b []byte, out *[]T, max int, what string) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t == nil { // null
		*out = nil
		return nil
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("%s: want an array, got %v", what, t)
	}
	list := []T{}
	for dec.More() {
		if len(list) == max {
			return fmt.Errorf("more than %d %s, the agent sends at most %d", max, what, max)
		}
		var v T
		if err := dec.Decode(&v); err != nil {
			return err
		}
		list = append(list, v)
	}
	*out = list
	return nil
}

// ErrProcProtocol is a reply from the agent that breaks the protocol.
var ErrProcProtocol = errors.New("guest: malformed smolvm-proc reply")

// ProcStart starts spec in the background and returns its record. With
// keepStdin the process's stdin stays open for ProcStdin, else it reads
// /dev/null.
func (c *Client) ProcStart(ctx context.Context, spec ProcSpec, keepStdin bool) (*ProcInfo, error) {
	return c.procOne(ctx, procRequest{Op: "start", Spec: &spec, KeepStdin: keepStdin})
}

// Procs lists the background processes, running and recently exited, in
// start order.
func (c *Client) Procs(ctx context.Context) ([]ProcInfo, error) {
	var out []ProcInfo
	got := false
	err := c.proc(ctx, procRequest{Op: "list"}, func(r *procReply) error {
		out, got = r.Procs, true
		return nil
	})
	switch {
	case err != nil:
		return nil, err
	case !got:
		return nil, fmt.Errorf("%w: no reply to list", ErrProcProtocol)
	case out == nil:
		out = []ProcInfo{}
	}
	if len(out) > maxProcs {
		return nil, fmt.Errorf("%w: %d processes listed, the agent keeps at most %d", ErrProcProtocol, len(out), maxProcs)
	}
	return out, nil
}

// Proc returns one process's record.
func (c *Client) Proc(ctx context.Context, id string) (*ProcInfo, error) {
	return c.procOne(ctx, procRequest{Op: "get", ID: id})
}

// ProcSignal sends sig (a name such as TERM or a number) to the process
// and its group.
func (c *Client) ProcSignal(ctx context.Context, id, sig string) (*ProcInfo, error) {
	return c.procOne(ctx, procRequest{Op: "signal", ID: id, Signal: sig})
}

// ProcWait waits until the process has exited and its output is all in.
func (c *Client) ProcWait(ctx context.Context, id string) (*ProcInfo, error) {
	return c.procOne(ctx, procRequest{Op: "wait", ID: id})
}

// ProcStdin writes data (up to MaxProcStdin bytes) to the process's
// stdin, then closes it if closeIt.
func (c *Client) ProcStdin(ctx context.Context, id string, data []byte, closeIt bool) (*ProcInfo, error) {
	if len(data) > MaxProcStdin {
		return nil, fmt.Errorf("guest: proc stdin: %d bytes; send at most %d at a time", len(data), MaxProcStdin)
	}
	return c.procOne(ctx, procRequest{Op: "stdin", ID: id, Data: data, Close: closeIt})
}

// AttachOptions says which output ProcAttach replays and whether it
// follows.
type AttachOptions struct {
	// Offset is where in the process's whole output to start; 0 replays
	// all the agent still has.
	Offset int64
	// Follow goes on with live output until the process exits (or ctx
	// ends, which detaches without touching the process).
	Follow bool
	// Dropped is called when output between the offset asked for and
	// what the agent kept is gone (n bytes).
	Dropped func(n int64)
}

// ProcAttach copies the process's output to stdout and stderr, as
// o says, and returns its record at the end (exited if Follow).
func (c *Client) ProcAttach(ctx context.Context, id string, stdout, stderr io.Writer, o AttachOptions) (*ProcInfo, error) {
	var last *ProcInfo
	stdout, stderr = orDiscard(stdout), orDiscard(stderr)
	err := c.proc(ctx, procRequest{Op: "attach", ID: id, Offset: o.Offset, Follow: o.Follow}, func(r *procReply) error {
		switch {
		case r.Proc != nil:
			last = r.Proc
		case r.Dropped > 0:
			if o.Dropped != nil {
				o.Dropped(r.Dropped)
			}
		case r.Stream == "stdout":
			_, err := stdout.Write(r.Data)
			return err
		case r.Stream == "stderr":
			_, err := stderr.Write(r.Data)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if last == nil {
		return nil, fmt.Errorf("%w: attach ended without the process's record", ErrProcProtocol)
	}
	return last, nil
}

func (c *Client) procOne(ctx context.Context, req procRequest) (*ProcInfo, error) {
	var out *ProcInfo
	err := c.proc(ctx, req, func(r *procReply) error {
		out = r.Proc
		return nil
	})
	if err == nil && out == nil {
		return nil, fmt.Errorf("%w: no record in the reply to %s", ErrProcProtocol, req.Op)
	}
	return out, err
}

// proc runs one smolvm-proc request: the request goes as the session's
// stdin, the reply lines come back on its stdout, each passed to frame
// (an Error line ends it with that error).
func (c *Client) proc(ctx context.Context, req procRequest, frame func(*procReply) error) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("guest: proc %s: %w", req.Op, err)
	}
	lw := &lineWriter{max: maxProcLine, line: func(line []byte) error {
		var r procReply
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%w: %v", ErrProcProtocol, err)
		}
		if r.Error != nil {
			if len(r.Error.Message) > maxAgentError {
				r.Error.Message = r.Error.Message[:maxAgentError]
			}
			return r.Error
		}
		return frame(&r)
	}}
	_, err = c.run(ctx, runSpec{
		request: "subsystem",
		arg:     "smolvm-proc",
		stdin:   bytes.NewReader(body),
		stdout:  lw,
	})
	if err == nil {
		err = lw.finish()
	}
	if err == nil {
		err = lw.err
	}
	if err != nil {
		return fmt.Errorf("guest: proc %s: %w", req.Op, err)
	}
	return nil
}

// lineWriter splits what is written into lines of at most max bytes and
// hands each to line. After the first error (a line too long, or line's)
// it keeps accepting and dropping bytes, so the session drains and ends.
type lineWriter struct {
	max  int
	line func([]byte) error
	buf  []byte
	err  error
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for w.err == nil && len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(w.buf)+len(p) > w.max {
				w.err = fmt.Errorf("%w: a line longer than %d bytes", ErrProcProtocol, w.max)
				break
			}
			w.buf = append(w.buf, p...)
			break
		}
		if len(w.buf)+i > w.max {
			w.err = fmt.Errorf("%w: a line longer than %d bytes", ErrProcProtocol, w.max)
			break
		}
		var line []byte
		if len(w.buf) > 0 {
			line = append(w.buf, p[:i]...)
		} else {
			line = p[:i]
		}
		w.err = w.line(line)
		w.buf = w.buf[:0]
		p = p[i+1:]
	}
	if w.err != nil {
		w.buf = nil
	}
	return n, nil
}

// finish handles an unterminated last line.
func (w *lineWriter) finish() error {
	if w.err == nil && len(w.buf) > 0 {
		w.err = fmt.Errorf("%w: unterminated line", ErrProcProtocol)
	}
	return w.err
}
