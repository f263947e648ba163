package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// Cmd is a program to run in the guest without a shell, as os/exec's Cmd
// is on the host: its arguments arrive verbatim (spaces, quotes, `$()`
// and all). Make one with VM.Command, set the fields, then Run, Output or
// Start it; a Cmd runs once.
type Cmd struct {
	// Args is the program and its arguments. Args[0] is looked up in the
	// guest's PATH unless it holds a slash; a program that is not there
	// is an error matching ErrNotFound and fs.ErrNotExist, not exit 127.
	Args []string
	// Dir is the working directory; empty = the user's home.
	Dir string
	// User is a name from the guest's /etc/passwd or a numeric uid;
	// empty = root.
	User string
	// Env adds to the guest's environment for this command only.
	Env map[string]string
	// Stdin feeds the command; nil = empty. Start ignores it (write with
	// Process.Write when StdinPipe is set).
	Stdin io.Reader
	// Stdout and Stderr, when set, receive the output as it comes and Run
	// keeps none of that stream; nil = Run captures it.
	Stdout, Stderr io.Writer
	// Timeout kills the command after that long (0 = none; Run only).
	Timeout time.Duration
	// OutputLimit is how much of each captured stream Run keeps (0 =
	// DefaultOutputLimit); the result says when it cut some.
	OutputLimit int64
	// StdinPipe (Start only) keeps the process's stdin open for
	// Process.Write and Process.CloseStdin; else it reads /dev/null.
	StdinPipe bool

	vm   *VM
	ctx  context.Context
	used bool
}

// Command returns the Cmd that runs name with args in the guest. ctx
// bounds Run and Output, and only the starting of Start.
func (v *VM) Command(ctx context.Context, name string, args ...string) *Cmd {
	return &Cmd{Args: append([]string{name}, args...), vm: v, ctx: ctx}
}

func (c *Cmd) check() error {
	if c.vm == nil {
		return errors.New("smolvm: Cmd not made by VM.Command")
	}
	if c.used {
		return opError("run", c.vm.id, fmt.Errorf("%w: a Cmd runs once; make another with VM.Command", ErrInvalid))
	}
	c.used = true
	if len(c.Args) == 0 || c.Args[0] == "" {
		return opError("run", c.vm.id, &ValidationError{Field: "command", Value: c.Args, Reason: "give a program name"})
	}
	return nil
}

// Run runs the command to completion. A non-zero exit is in the result,
// not an error; output not sent to Stdout or Stderr is captured up to the
// output limit, and the result says when some was dropped.
func (c *Cmd) Run() (*CommandResult, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	limit := c.OutputLimit
	if limit <= 0 {
		limit = DefaultOutputLimit
	}
	o := ExecOptions{Stdin: c.Stdin, Stdout: c.Stdout, Stderr: c.Stderr, Env: c.Env, Timeout: c.Timeout, Dir: c.Dir, User: c.User}
	var stdout, stderr *guest.LimitedBuffer
	if o.Stdout == nil {
		stdout = &guest.LimitedBuffer{Limit: limit}
		o.Stdout = stdout
	}
	if o.Stderr == nil {
		stderr = &guest.LimitedBuffer{Limit: limit}
		o.Stderr = stderr
	}
	code, err := c.vm.ExecArgv(c.ctx, c.Args, o)
	if err != nil {
		return nil, err
	}
	res := &CommandResult{ExitCode: code}
	if stdout != nil {
		res.Stdout, res.StdoutTruncated = stdout.String(), stdout.Truncated
	}
	if stderr != nil {
		res.Stderr, res.StderrTruncated = stderr.String(), stderr.Truncated
	}
	return res, nil
}

// ExitError is Output's error for a command that exited non-zero.
type ExitError struct {
	Result *CommandResult
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("command exited with status %d", e.Result.ExitCode)
	if s := strings.TrimSpace(e.Result.Stderr); s != "" {
		msg += ": " + firstLine(s)
	}
	return msg
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// Output runs the command and returns its stdout; a non-zero exit is an
// *ExitError holding the whole result.
func (c *Cmd) Output() ([]byte, error) {
	res, err := c.Run()
	if err != nil {
		return nil, err
	}
	if !res.OK() {
		return []byte(res.Stdout), &ExitError{Result: res}
	}
	return []byte(res.Stdout), nil
}

// Start starts the command in the background in the guest's agent and
// returns its handle: it runs on after this call, after ctx, and after
// this host process. Stdin, Stdout, Stderr and Timeout do not apply; read
// its output with Process.Attach.
func (c *Cmd) Start() (*Process, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.vm.StartProcess(c.ctx, ProcessSpec{Args: c.Args, Dir: c.Dir, User: c.User, Env: c.Env, StdinPipe: c.StdinPipe})
}

// ExecArgv runs argv without a shell, as Cmd does, streaming as Exec
// does (o.Dir and o.User apply; o.OutputLimit does not), and returns its
// exit code. A program, directory or user the guest lacks is an error
// matching ErrNotFound.
func (v *VM) ExecArgv(ctx context.Context, argv []string, o ExecOptions) (int, error) {
	if len(argv) == 0 || argv[0] == "" {
		return -1, opError("run", v.id, &ValidationError{Field: "command", Value: argv, Reason: "give a program name"})
	}
	return v.exec(ctx, guest.ExecRequest{Argv: argv}, o, func(ctx context.Context, c *guest.Client, req guest.ExecRequest) (int, error) {
		return c.Exec(ctx, req)
	})
}

// WithDir runs the command in dir (default: the user's home).
func WithDir(dir string) RunOption { return func(o *ExecOptions) { o.Dir = dir } }

// WithUser runs the command as user, a name from the guest's /etc/passwd
// or a numeric uid (default root).
func WithUser(user string) RunOption { return func(o *ExecOptions) { o.User = user } }

// shellQuoteArgv renders argv for messages, quoted as a shell would need.
func shellQuoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
