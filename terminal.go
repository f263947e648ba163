package smolvm

import (
	"context"

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
	if t.Width < 0 || t.Height < 0 || t.Width > 1<<15 || t.Height > 1<<15 {
		return -1, opError("run", v.id, &ValidationError{Field: "terminal size", Value: [2]int{t.Width, t.Height}, Reason: "want 0 (the default, 80x24) up to 32768 cells each way"})
	}
	o.TTY = true
	return v.exec(ctx, guest.ExecRequest{Command: cmd}, o, func(ctx context.Context, c *guest.Client, req guest.ExecRequest) (int, error) {
		return c.ExecPTY(ctx, req, t.Term, t.Width, t.Height, t.Resize)
	})
}
