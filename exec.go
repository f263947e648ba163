package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// DefaultOutputLimit is how much of each of stdout and stderr Run keeps
// (64 MiB each). Past it the command still runs to completion, its further
// output is read and dropped, and the result says so (StdoutTruncated,
// StderrTruncated). WithOutputLimit changes it; stream with Exec to keep
// everything.
const DefaultOutputLimit = 64 << 20

// CommandResult is the outcome of a command that ran to completion. A
// non-zero exit code is a result, not an error.
type CommandResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
	// StdoutTruncated and StderrTruncated report that the stream was
	// longer than the output limit and only its first part is here.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	StderrTruncated bool `json:"stderr_truncated,omitempty"`
}

// Truncated reports whether any output was dropped.
func (r *CommandResult) Truncated() bool { return r.StdoutTruncated || r.StderrTruncated }

// OK reports whether the command exited with status 0.
func (r *CommandResult) OK() bool { return r.ExitCode == 0 }

// Output returns stdout, or stderr when stdout is empty, for quick checks.
func (r *CommandResult) Output() string {
	if r.Stdout == "" {
		return r.Stderr
	}
	return r.Stdout
}

// RunOption adjusts one command.
type RunOption func(*ExecOptions)

// WithTimeout bounds the command; past it the command is killed in the
// guest and Run returns a *TimeoutError.
func WithTimeout(d time.Duration) RunOption { return func(o *ExecOptions) { o.Timeout = d } }

// WithRunEnv sets variables for this command only.
func WithRunEnv(env map[string]string) RunOption {
	return func(o *ExecOptions) {
		if o.Env == nil {
			o.Env = map[string]string{}
		}
		maps.Copy(o.Env, env)
	}
}

// WithStdin feeds r to the command's standard input.
func WithStdin(r io.Reader) RunOption { return func(o *ExecOptions) { o.Stdin = r } }

// WithOutputLimit sets how many bytes of each of stdout and stderr Run
// keeps; n <= 0 means DefaultOutputLimit. Exec streams and ignores it.
func WithOutputLimit(n int64) RunOption { return func(o *ExecOptions) { o.OutputLimit = n } }

// ExecOptions configures a streaming command.
type ExecOptions struct {
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Env     map[string]string
	Timeout time.Duration
	// TTY runs the command on a pseudo-terminal (stdout and stderr merge).
	TTY bool
	// OutputLimit is Run's cap per stream (WithOutputLimit); Exec, which
	// streams, ignores it.
	OutputLimit int64
	// Dir is the working directory and User the guest user (a name from
	// its /etc/passwd or a numeric uid) the command runs as; empty = root
	// in its home. A directory or user the guest lacks is an error
	// matching ErrNotFound.
	Dir, User string
	// Signals carries signal names (TERM, INT, KILL, ...) to deliver to
	// the command's process group while it runs; how it ends is its exit
	// code, as usual (128+N if the signal killed it).
	Signals <-chan string
	// Secrets are variables for this command only, as Env, that smolvm
	// never writes down (see WithSecrets); they win over Env.
	Secrets map[string]string `json:"-"`
}

// Run runs cmd with the guest's shell and returns its output and exit code.
// It keeps at most the output limit of each stream (DefaultOutputLimit,
// WithOutputLimit) and says in the result when it dropped some.
func (v *VM) Run(ctx context.Context, cmd string, opts ...RunOption) (*CommandResult, error) {
	var o ExecOptions
	for _, opt := range opts {
		opt(&o)
	}
	limit := o.OutputLimit
	if limit <= 0 {
		limit = DefaultOutputLimit
	}
	stdout, stderr := &guest.LimitedBuffer{Limit: limit}, &guest.LimitedBuffer{Limit: limit}
	o.Stdout, o.Stderr = stdout, stderr
	code, err := v.Exec(ctx, cmd, o)
	if err != nil {
		return nil, err
	}
	return &CommandResult{
		Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: code,
		StdoutTruncated: stdout.Truncated, StderrTruncated: stderr.Truncated,
	}, nil
}

// Exec runs cmd streaming its input and output, and returns its exit code.
// o.Env sets variables for this command only; o.Timeout kills it after
// that long (0 = no limit). A negative Timeout or an Env name that
// ValidateEnvName refuses is an error matching ErrInvalid.
//
// Without a timeout or a deadline on ctx the command runs as long as it
// takes, however quiet; only a guest that stops answering ends it (20-25 s
// after it last sent anything; a *TimeoutError), or a VM process
// that exits (ErrNotRunning). Cancelling ctx ends this command only.
func (v *VM) Exec(ctx context.Context, cmd string, o ExecOptions) (int, error) {
	return v.exec(ctx, guest.ExecRequest{Command: cmd}, o, func(ctx context.Context, c *guest.Client, req guest.ExecRequest) (int, error) {
		return c.Exec(ctx, req)
	})
}

// exec checks o, bounds ctx by its timeout and runs the command (req's
// Command or Argv, Dir, User) with start on the VM's connection: what
// Exec, ExecTerminal and Cmd share.
func (v *VM) exec(ctx context.Context, req guest.ExecRequest, o ExecOptions, start func(context.Context, *guest.Client, guest.ExecRequest) (int, error)) (int, error) {
	if o.Timeout < 0 {
		return -1, opError("run", v.id, &ValidationError{Field: "timeout", Value: o.Timeout, Reason: "must not be negative; 0 means no limit"})
	}
	if err := ValidateEnv(o.Env); err != nil {
		return -1, opError("run", v.id, err)
	}
	if len(o.Secrets) > 0 {
		if err := ValidateEnv(o.Secrets); err != nil {
			return -1, opError("run", v.id, err)
		}
		if err := v.markSecrets(ctx, false); err != nil {
			return -1, opError("run", v.id, err)
		}
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	c, err := v.conn(ctx)
	if err != nil {
		return -1, opError("run", v.id, err)
	}
	req.Env, req.Stdin, req.Stdout, req.Stderr, req.PTY = withSecrets(o.Env, o.Secrets), o.Stdin, o.Stdout, o.Stderr, o.TTY
	req.Dir, req.User, req.Signals = o.Dir, o.User, o.Signals
	code, err := start(ctx, c, req)
	if err != nil {
		cmd := req.Command
		if len(req.Argv) > 0 {
			cmd = shellQuoteArgv(req.Argv)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && errors.Is(err, context.DeadlineExceeded) {
			return -1, &TimeoutError{Op: "run", VM: v.id, Timeout: o.Timeout, Detail: "command killed: " + cmd}
		}
		if gone := v.goneDuring(); gone != "" && !errors.Is(err, ErrNotRunning) {
			// The session only saw its channel close; say why.
			err = fmt.Errorf("%w: the VM %s while the command ran (%w)", ErrNotRunning, gone, err)
		}
		return -1, opError("run", v.id, agentError(err))
	}
	return code, nil
}

// goneDuring says how the VM went away ("was deleted", "stopped"), or ""
// if it still runs.
func (v *VM) goneDuring() string {
	if err := v.exists(context.Background()); err != nil {
		return "was deleted"
	}
	info := v.Info()
	if !hypervisor.Alive(v.process(), info.Process) {
		return "stopped"
	}
	return ""
}

// Shell runs an interactive login shell on a pseudo-terminal.
func (v *VM) Shell(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, term string, width, height int, resize <-chan [2]int) (int, error) {
	c, err := v.conn(ctx)
	if err != nil {
		return -1, opError("shell", v.id, err)
	}
	code, err := c.Shell(ctx, stdin, stdout, stderr, term, width, height, resize)
	return code, opError("shell", v.id, err)
}

// dropClientOnError forgets a connection that has ended, so the next call
// dials again (after a guest restart, say). A call that failed on a live
// connection, a cancelled command say, leaves it alone: other calls share
// it. conn also drops an ended connection before handing it out.
func (v *VM) dropClientOnError(c *guest.Client) {
	if c.Err() == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.client == c {
		v.dropClient()
	}
}

// peerState tells the connection's keepalive what the host sees of the VM:
// its process gone, or paused on purpose (by this process or another, so
// the state database says), or running.
func (v *VM) peerState() guest.PeerState {
	if !hypervisor.Alive(v.process(), v.Info().Process) {
		return guest.PeerGone
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if row, err := v.st.GetVM(ctx, v.id); err == nil && VMState(row.State) == StatePaused {
		return guest.PeerPaused
	}
	return guest.PeerRunning
}

// CanRunCommands reports whether a command can run now.
func (v *VM) CanRunCommands(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := v.Run(ctx, "true")
	return err == nil && res.OK()
}
