package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// ExecRequest describes one command to run in the guest.
type ExecRequest struct {
	// Command is run by the guest's shell as `SHELL -c Command`.
	Command string
	// Env adds to the guest's environment (persistent variables included)
	// and overrides it.
	Env map[string]string
	// Stdin feeds the command; nil gives it immediate EOF. Exec does not
	// wait for a blocked Stdin.Read to return, but reads no more after it.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output; nil discards it. With
	// PTY both streams arrive merged on Stdout. Neither is written to after
	// Exec returns.
	Stdout, Stderr io.Writer
	// PTY runs the command on a pseudo-terminal (TERM from Env, else xterm).
	PTY bool
	// Argv, when set, is run without a shell instead of Command: Argv[0]
	// is looked up in the guest's PATH unless it holds a slash, and a
	// program that is not there is an error (a *CommandError), not exit
	// 127. Dir and User (a name or a numeric uid) set the working
	// directory and the user, for either form; empty = root in its home.
	Argv      []string
	Dir, User string
	// Signals are signal names (TERM, KILL...) to send to the command's
	// process group while it runs.
	Signals <-chan string
}

// Exec runs req.Command and returns its exit code; a non-zero exit is not an
// error. A command killed by a signal yields 128+signum. When ctx is done
// the command's process group is sent SIGKILL, the session (only this one;
// the connection stays) is closed and the error wraps ctx.Err(). If the
// connection ends under the command, the error wraps why (ErrUnresponsive,
// ErrGone).
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	if req.PTY {
		return c.ExecPTY(ctx, req, "", 0, 0, nil)
	}
	request, arg, err := req.request()
	if err != nil {
		return -1, fmt.Errorf("guest: exec: %w", err)
	}
	code, err := c.run(ctx, runSpec{
		request: request,
		arg:     arg,
		env:     req.Env,
		stdin:   req.Stdin,
		stdout:  req.Stdout,
		stderr:  req.Stderr,
		signals: req.Signals,
	})
	if err != nil {
		return code, fmt.Errorf("guest: exec: %w", err)
	}
	return code, nil
}

// Shell runs root's interactive login shell on a pseudo-terminal of the
// given size and TERM. Sizes received on resize are [width, height] in
// cells. It returns the shell's exit code, like Exec.
func (c *Client) Shell(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, term string, width, height int, resize <-chan [2]int) (int, error) {
	code, err := c.run(ctx, runSpec{
		request: "shell",
		stdin:   stdin,
		stdout:  stdout,
		stderr:  stderr,
		pty:     &ptySpec{term: term, cols: width, rows: height},
		resize:  resize,
	})
	if err != nil {
		return code, fmt.Errorf("guest: shell: %w", err)
	}
	return code, nil
}

// runSpec is one session: the request that starts it and its plumbing.
type runSpec struct {
	request        string // "exec", "shell" or "subsystem"
	arg            string // command or subsystem name
	env            map[string]string
	stdin          io.Reader
	stdout, stderr io.Writer
	pty            *ptySpec
	resize         <-chan [2]int
	signals        <-chan string
}

type ptySpec struct {
	term       string
	cols, rows int
}

// run opens a session channel and runs spec on it. Starting it is bounded
// by DefaultSetupTimeout; the command itself only by ctx and by the
// keepalive, which ends the connection if the guest stops answering.
func (c *Client) run(ctx context.Context, spec runSpec) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if err := c.Err(); err != nil {
		return -1, err
	}
	end := c.begin()
	defer end()
	// Starting waits on the guest, and x/crypto/ssh cannot abandon a
	// channel open or a request reply, so start in a goroutine: ctx is
	// honoured even if the guest has stopped answering. A session that
	// starts after all is killed at once.
	started := make(chan startedSession, 1)
	go func() { started <- c.start(spec) }()
	abandon := func() {
		go func() {
			if s := <-started; s.err == nil {
				kill(s.ch)
			}
		}()
	}
	setup := time.NewTimer(DefaultSetupTimeout)
	defer setup.Stop()
	var sess startedSession
	select {
	case sess = <-started:
		if sess.err != nil {
			return -1, c.cause(sess.err)
		}
	case <-ctx.Done():
		abandon()
		return -1, ctx.Err()
	case <-setup.C:
		abandon()
		return -1, fmt.Errorf("%w: %s did not start within %s", ErrUnresponsive, spec.request, DefaultSetupTimeout)
	}
	setup.Stop()
	ch, exited := sess.ch, sess.exited

	stdin := &gatedReader{r: spec.stdin}
	stdout := &gatedWriter{w: orDiscard(spec.stdout)}
	stderr := &gatedWriter{w: orDiscard(spec.stderr)}
	go func() {
		if spec.stdin != nil {
			_, _ = io.Copy(ch, stdin)
		}
		_ = ch.CloseWrite()
	}()
	output := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		wg.Go(func() { _, _ = io.Copy(stdout, ch) })
		wg.Go(func() { _, _ = io.Copy(stderr, ch.Stderr()) })
		wg.Wait()
		close(output)
	}()
	finished := make(chan struct{})
	defer close(finished)
	if spec.resize != nil {
		go forwardResize(ch, spec.resize, finished)
	}
	if spec.signals != nil {
		go forwardSignals(ch, spec.signals, finished)
	}

	// Done when the guest has closed the channel (after the exit status)
	// and all output up to that point has been written out.
	var exit exitInfo
	for gotExit, gotOutput := false, false; !gotExit || !gotOutput; {
		select {
		case exit = <-exited:
			gotExit = true
		case <-output:
			gotOutput = true
			output = nil
		case <-ctx.Done():
			// Only this session ends; the connection and the other
			// sessions on it stay. Killing writes to the connection,
			// which may block on a guest that stopped reading, so it must
			// not hold up the return.
			go kill(ch)
			stdin.close()
			stdout.close()
			stderr.close()
			return -1, ctx.Err()
		}
	}
	stdin.close()
	if exit.err != nil {
		return -1, exit.err
	}
	if !exit.ok {
		return -1, c.cause(errors.New("session closed without an exit status"))
	}
	return exit.code, nil
}

type startedSession struct {
	ch     ssh.Channel
	exited <-chan exitInfo // receives once the channel has closed
	err    error
}

// start opens a session channel and starts spec on it. Only the channel
// open and the start request wait for the guest: env and pty-req go
// without asking for a reply, and the guest handles a channel's requests
// in order, so a failed one would still fail the start request.
func (c *Client) start(spec runSpec) startedSession {
	ch, reqs, err := c.ssh.OpenChannel("session", nil)
	if err != nil {
		return startedSession{err: fmt.Errorf("open session: %w", err)}
	}
	exited := make(chan exitInfo, 1)
	go func() { exited <- collectExit(reqs) }()
	fail := func(err error) startedSession {
		ch.Close()
		return startedSession{err: err}
	}

	for _, k := range slices.Sorted(maps.Keys(spec.env)) {
		payload := ssh.Marshal(struct{ Name, Value string }{k, spec.env[k]})
		if _, err := ch.SendRequest("env", false, payload); err != nil {
			return fail(fmt.Errorf("send env: %w", err))
		}
	}
	if p := spec.pty; p != nil {
		payload := ssh.Marshal(struct {
			Term                 string
			Cols, Rows, PxW, PxH uint32
			Modes                string
		}{Term: p.term, Cols: uint32(max(p.cols, 0)), Rows: uint32(max(p.rows, 0)), Modes: "\x00"})
		if _, err := ch.SendRequest("pty-req", false, payload); err != nil {
			return fail(fmt.Errorf("send pty-req: %w", err))
		}
	}
	var payload []byte
	if spec.request != "shell" {
		payload = ssh.Marshal(struct{ S string }{spec.arg})
	}
	ok, err := ch.SendRequest(spec.request, true, payload)
	if err != nil {
		return fail(fmt.Errorf("send %s request: %w", spec.request, err))
	}
	if !ok {
		err := fmt.Errorf("guest refused %s request", spec.request)
		if spec.request == "exec-argv@smolvm" || spec.arg == "smolvm-proc" {
			// Only an agent older than this host refuses these outright.
			err = fmt.Errorf("%w: %w", ErrOldAgent, err)
		}
		return fail(err)
	}
	return startedSession{ch: ch, exited: exited}
}

// kill asks the guest to SIGKILL the session's process group and closes
// the channel, which makes the guest kill it anyway.
func kill(ch ssh.Channel) {
	_, _ = ch.SendRequest("signal", false, ssh.Marshal(struct{ Signal string }{"KILL"}))
	_ = ch.Close()
}

type exitInfo struct {
	code int
	ok   bool
	err  *CommandError // the agent could not start the command
}

// collectExit drains a session's requests until the channel closes and
// returns the exit status it reported, if any.
func collectExit(reqs <-chan *ssh.Request) exitInfo {
	var ex exitInfo
	for req := range reqs {
		switch req.Type {
		case "exit-status":
			var p struct{ Status uint32 }
			if ssh.Unmarshal(req.Payload, &p) == nil {
				ex.code, ex.ok = int(p.Status), true
			}
		case "exit-signal":
			var p struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}
			if ssh.Unmarshal(req.Payload, &p) == nil {
				ex.code, ex.ok = 128+linuxSignals[p.Signal], true
			}
		case "error@smolvm":
			ex.err = parseCommandError(req.Payload)
		}
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
	return ex
}

// linuxSignals maps SSH signal names to the guest's (Linux) numbers, which
// need not match the host's.
var linuxSignals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7,
	"FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13,
	"ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19,
	"TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
	"VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "PWR": 30, "SYS": 31,
}

func forwardResize(ch ssh.Channel, resize <-chan [2]int, finished <-chan struct{}) {
	for {
		select {
		case sz, ok := <-resize:
			if !ok {
				return
			}
			payload := ssh.Marshal(struct{ Cols, Rows, PxW, PxH uint32 }{
				Cols: uint32(max(sz[0], 0)), Rows: uint32(max(sz[1], 0)),
			})
			if _, err := ch.SendRequest("window-change", false, payload); err != nil {
				return
			}
		case <-finished:
			return
		}
	}
}

// forwardSignals sends each signal name received as a "signal" request,
// which the agent delivers to the command's process group.
func forwardSignals(ch ssh.Channel, signals <-chan string, finished <-chan struct{}) {
	for {
		select {
		case sig, ok := <-signals:
			if !ok {
				return
			}
			if _, err := ch.SendRequest("signal", false, ssh.Marshal(struct{ Signal string }{sig})); err != nil {
				return
			}
		case <-finished:
			return
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

var errGateClosed = errors.New("guest: session finished")

// gatedWriter stops passing writes on once closed, so that copiers still
// draining a killed session never touch the caller's writer after the call
// has returned.
type gatedWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, errGateClosed
	}
	return g.w.Write(p)
}

// close waits for a write in progress and blocks later ones.
func (g *gatedWriter) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// gatedReader returns EOF once closed. A Read already blocked in the
// underlying reader cannot be interrupted; its data is dropped.
type gatedReader struct {
	r      io.Reader
	closed atomic.Bool
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.closed.Load() {
		return 0, io.EOF
	}
	n, err := g.r.Read(p)
	if g.closed.Load() {
		return 0, io.EOF
	}
	return n, err
}

func (g *gatedReader) close() { g.closed.Store(true) }
