package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrInvalidName means an environment variable name is not a POSIX name
// ([A-Za-z_][A-Za-z0-9_]*).
var ErrInvalidName = errors.New("guest: invalid environment variable name")

// envRequest is the smolvm-env subsystem's request; see internal/agent.
type envRequest struct {
	Op   string            `json:"op"`
	Vars map[string]string `json:"vars,omitempty"`
	Keys []string          `json:"keys,omitempty"`
}

// SetEnv adds or replaces persistent variables in the guest; they apply to
// every later command and login shell. It returns the whole resulting set.
func (c *Client) SetEnv(ctx context.Context, vars map[string]string) (map[string]string, error) {
	for k := range vars {
		if !validEnvName(k) {
			return nil, fmt.Errorf("%w: %q", ErrInvalidName, k)
		}
	}
	return c.envOp(ctx, envRequest{Op: "set", Vars: vars})
}

// UnsetEnv removes persistent variables; absent ones are ignored. It
// returns the whole resulting set.
func (c *Client) UnsetEnv(ctx context.Context, keys ...string) (map[string]string, error) {
	for _, k := range keys {
		if !validEnvName(k) {
			return nil, fmt.Errorf("%w: %q", ErrInvalidName, k)
		}
	}
	return c.envOp(ctx, envRequest{Op: "unset", Keys: keys})
}

// Env returns the guest's persistent variables.
func (c *Client) Env(ctx context.Context) (map[string]string, error) {
	return c.envOp(ctx, envRequest{Op: "list"})
}

// maxEnvReply bounds the guest's answer to an env request: the guest is
// not trusted, and the host must not buffer without limit for it.
const maxEnvReply = 16 << 20

// envOp sends one request to the guest's smolvm-env subsystem: the JSON
// request on stdin, the JSON reply on stdout. It is not a user's command,
// so it is bounded by DefaultSetupTimeout even when ctx is not.
func (c *Client) envOp(ctx context.Context, req envRequest) (map[string]string, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("guest: env %s: %w", req.Op, err)
	}
	opCtx, cancel := context.WithTimeout(ctx, DefaultSetupTimeout)
	defer cancel()
	out := &LimitedBuffer{Limit: maxEnvReply}
	code, err := c.run(opCtx, runSpec{
		request: "subsystem",
		arg:     "smolvm-env",
		stdin:   bytes.NewReader(body),
		stdout:  out,
	})
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: no answer within %s", ErrUnresponsive, DefaultSetupTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("guest: env %s: %w", req.Op, err)
	}
	if out.Truncated {
		return nil, fmt.Errorf("guest: env %s: reply larger than %d bytes", req.Op, maxEnvReply)
	}
	var resp struct {
		Env   map[string]string `json:"env"`
		Error string            `json:"error"`
	}
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("guest: env %s: unreadable reply (exit status %d): %w", req.Op, code, err)
	}
	if resp.Error != "" || code != 0 {
		return nil, fmt.Errorf("guest: env %s: guest says: %s (exit status %d)", req.Op, resp.Error, code)
	}
	if resp.Env == nil {
		resp.Env = map[string]string{}
	}
	return resp.Env, nil
}

// validEnvName mirrors the guest's check, so that callers get
// ErrInvalidName without a round trip.
func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range []byte(name) {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}
