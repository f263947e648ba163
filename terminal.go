package smolvm

import (
	"context"
	"errors"

	"github.com/smolvm/smolvm/internal/guest"
)

// Terminal is the pseudo-terminal ExecTerminal runs a command on.
type Terminal struct {
	Term          string // TERM; empty = o.Env's TERM, else xterm
	Width, Height int    // cells; 0 = 80 x 24
	// Resize receives new [width, height] sizes while the command runs.
	Resize <-chan [2]int
}

// ExecTerminal runs cmd as Exec does, on the pseudo-terminal t (stdout
// and stderr merge into o.Stdout), which follows the sizes sent on
// t.Resize: what a remote terminal (the API's exec WebSocket) needs.
func (v *VM) ExecTerminal(ctx context.Context, cmd string, o ExecOptions, t Terminal) (int, error) {
	if o.Timeout < 0 {
		return -1, opError("run", v.id, &ValidationError{Field: "timeout", Value: o.Timeout, Reason: "must not be negative; 0 means no limit"})
	}
	if t.Width < 0 || t.Height < 0 || t.Width > 1<<15 || t.Height > 1<<15 {
		return -1, opError("run", v.id, &ValidationError{Field: "terminal size", Value: [2]int{t.Width, t.Height}, Reason: "want 0 (the default, 80x24) up to 32768 cells each way"})
	}
	if err := ValidateEnv(o.Env); err != nil {
		return -1, opError("run", v.id, err)
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
	code, err := c.ExecPTY(ctx, guest.ExecRequest{
		Command: cmd, Env: o.Env, Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, PTY: true,
	}, t.Term, t.Width, t.Height, t.Resize)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && errors.Is(err, context.DeadlineExceeded) {
			return -1, &TimeoutError{Op: "run", VM: v.id, Timeout: o.Timeout, Detail: "command killed: " + cmd}
		}
		return -1, opError("run", v.id, err)
	}
	return code, nil
}
