package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// ErrProcessExited: the background process has exited, so it can no
// longer be signalled.
var ErrProcessExited = errors.New("process has exited")

// Bounds of the guest agent's background-process table.
const (
	// MaxProcesses is how many background processes a VM keeps, running
	// and exited; starting one more evicts the oldest exited one, and
	// fails when all of them run.
	MaxProcesses = 1024
	// ProcessOutputBuffer is how much recent output (both streams) the
	// agent keeps per process for Attach; older output is dropped, and
	// Attach says how much.
	ProcessOutputBuffer = 1 << 20
)

// ProcessSpec is a background process to start: Args run without a shell
// (as Cmd does), or Shell, a command line for the guest's shell.
type ProcessSpec struct {
	Args  []string          `json:"argv,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Dir   string            `json:"dir,omitempty"`  // empty = the user's home
	User  string            `json:"user,omitempty"` // name or uid; empty = root
	Env   map[string]string `json:"env,omitempty"`
	// StdinPipe keeps the process's stdin open for Process.Write; else
	// it reads /dev/null.
	StdinPipe bool `json:"stdin,omitempty"`
}

// ExitStatus is how a process ended. A process a signal ended has Signal
// set (TERM, KILL, ...) and ExitCode 128 plus the signal's number.
type ExitStatus struct {
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	CoreDumped bool   `json:"core_dumped,omitempty"`
}

// ProcessInfo is what the agent knows of a background process.
type ProcessInfo struct {
	ID        string      `json:"id"`
	PID       int         `json:"pid"` // in the guest
	Args      []string    `json:"argv,omitempty"`
	Shell     string      `json:"shell,omitempty"`
	Dir       string      `json:"dir,omitempty"`
	User      string      `json:"user,omitempty"`
	StdinOpen bool        `json:"stdin_open,omitempty"`
	StartedAt time.Time   `json:"started_at"`
	Running   bool        `json:"running"`
	ExitedAt  *time.Time  `json:"exited_at,omitempty"`
	Exit      *ExitStatus `json:"exit,omitempty"`
	// OutputBytes is all it wrote so far; DroppedBytes of that is no
	// longer in the agent's buffer.
	OutputBytes  int64 `json:"output_bytes"`
	DroppedBytes int64 `json:"dropped_bytes,omitempty"`
	// CommandTruncated says Args or Shell is only the start of the
	// command: a list (VM.Processes) carries at most 4 KiB of each;
	// Process.Info has all of it.
	CommandTruncated bool `json:"command_truncated,omitempty"`
}

func processInfo(g *guest.ProcInfo) ProcessInfo {
	in := ProcessInfo{
		ID: g.ID, PID: g.PID, Args: g.Argv, Shell: g.Shell, Dir: g.Dir, User: g.User, StdinOpen: g.Stdin,
		StartedAt: g.StartedAt, Running: g.Running, ExitedAt: g.ExitedAt,
		OutputBytes: g.OutputBytes, DroppedBytes: g.Dropped, CommandTruncated: g.Truncated,
	}
	if g.Exit != nil {
		in.Exit = &ExitStatus{ExitCode: g.Exit.ExitCode, Signal: g.Exit.Signal, CoreDumped: g.Exit.CoreDumped}
	}
	return in
}

// Process is a handle on a background process in a VM's agent. The
// process does not depend on the handle: it runs until it exits or is
// signalled, and any handle (VM.Process, from another host process too)
// reaches it by id.
type Process struct {
	vm  *VM
	id  string
	pid int
}

// ID is the process's id in its VM (p1, p2, ...).
func (p *Process) ID() string { return p.id }

// PID is its process id in the guest.
func (p *Process) PID() int { return p.pid }

// StartProcess starts spec in the background in the guest; see Process.
// ctx bounds the start only.
func (v *VM) StartProcess(ctx context.Context, spec ProcessSpec) (*Process, error) {
	if (len(spec.Args) == 0) == (spec.Shell == "") {
		return nil, opError("process start", v.id, &ValidationError{Field: "process", Value: spec.Args, Reason: "give either Args (run without a shell) or Shell (a command line)"})
	}
	if err := ValidateEnv(spec.Env); err != nil {
		return nil, opError("process start", v.id, err)
	}
	var in *guest.ProcInfo
	err := v.withConn(ctx, "process start", func(c *guest.Client) (err error) {
		in, err = c.ProcStart(ctx, guest.ProcSpec{Argv: spec.Args, Shell: spec.Shell, Dir: spec.Dir, User: spec.User, Env: spec.Env}, spec.StdinPipe)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Process{vm: v, id: in.ID, pid: in.PID}, nil
}

// Processes lists the VM's background processes, running and recently
// exited (up to MaxProcesses), in start order.
func (v *VM) Processes(ctx context.Context) ([]ProcessInfo, error) {
	var list []guest.ProcInfo
	err := v.withConn(ctx, "processes", func(c *guest.Client) (err error) {
		list, err = c.Procs(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]ProcessInfo, len(list))
	for i := range list {
		out[i] = processInfo(&list[i])
	}
	return out, nil
}

// Process returns a handle on the background process id; one the agent
// does not have (any more) is an error matching ErrNotFound.
func (v *VM) Process(ctx context.Context, id string) (*Process, error) {
	p := &Process{vm: v, id: id}
	in, err := p.Info(ctx)
	if err != nil {
		return nil, err
	}
	p.pid = in.PID
	return p, nil
}

// Info returns the process's current record.
func (p *Process) Info(ctx context.Context) (*ProcessInfo, error) {
	return p.call(ctx, "process", func(c *guest.Client) (*guest.ProcInfo, error) { return c.Proc(ctx, p.id) })
}

// Signal sends sig, a name (TERM, SIGKILL, int) or a number, to the
// process and its process group. A process that has exited is an error
// matching ErrProcessExited.
func (p *Process) Signal(ctx context.Context, sig string) error {
	_, err := p.call(ctx, "process signal", func(c *guest.Client) (*guest.ProcInfo, error) { return c.ProcSignal(ctx, p.id, sig) })
	return err
}

// Wait waits for the process to exit (ctx ends only the waiting) and
// returns how it ended.
func (p *Process) Wait(ctx context.Context) (*ExitStatus, error) {
	in, err := p.call(ctx, "process wait", func(c *guest.Client) (*guest.ProcInfo, error) { return c.ProcWait(ctx, p.id) })
	if err != nil {
		return nil, err
	}
	if in.Exit == nil {
		return nil, opError("process wait", p.vm.id, fmt.Errorf("%w: the agent's record of %s has no exit status", guest.ErrProcProtocol, p.id))
	}
	return in.Exit, nil
}

// Write writes data to the process's stdin (started with StdinPipe).
func (p *Process) Write(ctx context.Context, data []byte) error {
	for {
		n := min(len(data), guest.MaxProcStdin)
		if _, err := p.call(ctx, "process stdin", func(c *guest.Client) (*guest.ProcInfo, error) {
			return c.ProcStdin(ctx, p.id, data[:n], false)
		}); err != nil {
			return err
		}
		if data = data[n:]; len(data) == 0 {
			return nil
		}
	}
}

// CloseStdin closes the process's stdin, so it reads EOF.
func (p *Process) CloseStdin(ctx context.Context) error {
	_, err := p.call(ctx, "process stdin", func(c *guest.Client) (*guest.ProcInfo, error) { return c.ProcStdin(ctx, p.id, nil, true) })
	return err
}

// AttachOptions says what Attach replays and whether it follows.
type AttachOptions struct {
	// Offset is where in the process's whole output to begin: 0 replays
	// all the agent still keeps (up to ProcessOutputBuffer).
	Offset int64
	// Follow goes on with live output until the process exits or ctx
	// ends; ending ctx detaches and leaves the process running.
	Follow bool
	// Dropped, if set, is told how many bytes of output from Offset on
	// the agent no longer had.
	Dropped func(n int64)
}

// Attach copies the process's recent output to stdout and stderr (each
// stream to its own), then with o.Follow its live output until it exits,
// and returns its record (with Exit once it has exited).
func (p *Process) Attach(ctx context.Context, stdout, stderr io.Writer, o AttachOptions) (*ProcessInfo, error) {
	return p.call(ctx, "process attach", func(c *guest.Client) (*guest.ProcInfo, error) {
		return c.ProcAttach(ctx, p.id, stdout, stderr, guest.AttachOptions{Offset: o.Offset, Follow: o.Follow, Dropped: o.Dropped})
	})
}

func (p *Process) call(ctx context.Context, op string, fn func(*guest.Client) (*guest.ProcInfo, error)) (*ProcessInfo, error) {
	var in *guest.ProcInfo
	err := p.vm.withConn(ctx, op, func(c *guest.Client) (err error) {
		in, err = fn(c)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := processInfo(in)
	return &out, nil
}

// withConn runs fn on the VM's guest connection and gives its error the
// VM's kinds.
func (v *VM) withConn(ctx context.Context, op string, fn func(*guest.Client) error) error {
	c, err := v.conn(ctx)
	if err != nil {
		return opError(op, v.id, err)
	}
	if err := fn(c); err != nil {
		v.dropClientOnError(c)
		if gone := v.goneDuring(); gone != "" && !errors.Is(err, ErrNotRunning) {
			err = fmt.Errorf("%w: the VM %s (%w)", ErrNotRunning, gone, err)
		}
		return opError(op, v.id, agentError(err))
	}
	return nil
}

// agentError gives the agent's refusals (*guest.CommandError) the root
// package's kinds: a program, directory, user or process that is not
// there is ErrNotFound; bad input (a file that is not executable too)
// ErrInvalid.
func agentError(err error) error {
	var ce *guest.CommandError
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.Kind {
	case "not_found":
		return &kindError{ErrNotFound, ce}
	case "invalid", "limit", "permission":
		return &kindError{ErrInvalid, ce}
	case "exited":
		return &kindError{ErrProcessExited, ce}
	}
	return err
}

// kindError is the agent's message, matching both a root sentinel and
// the *guest.CommandError (and through it fs.ErrNotExist...).
type kindError struct {
	kind error
	ce   *guest.CommandError
}

func (e *kindError) Error() string   { return e.ce.Message }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.ce} }
