package guest

import (
	"context"
	"fmt"
)

// ExecPTY runs req.Command on a pseudo-terminal of width x height cells
// and TERM term (empty: req.Env's TERM, else xterm), resized to each
// [width, height] received on resize, as Shell is. req.PTY is implied.
func (c *Client) ExecPTY(ctx context.Context, req ExecRequest, term string, width, height int, resize <-chan [2]int) (int, error) {
	if term == "" {
		term = req.Env["TERM"]
	}
	if term == "" {
		term = "xterm"
	}
	if width <= 0 {
		width = 80
	}
	if height <= 0 {
		height = 24
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
		pty:     &ptySpec{term: term, cols: width, rows: height},
		resize:  resize,
		signals: req.Signals,
	})
	if err != nil {
		return code, fmt.Errorf("guest: exec: %w", err)
	}
	return code, nil
}
