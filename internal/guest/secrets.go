package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// maxSecretsReply bounds the guest's answer to a secrets request.
const maxSecretsReply = 4 << 10

// SetSecrets hands the guest's agent its start secrets: variables every
// later command's environment gets, which the agent keeps in memory only.
// The set replaces the previous one. Errors never quote a value.
func (c *Client) SetSecrets(ctx context.Context, secrets map[string]string) error {
	for k := range secrets {
		if !validEnvName(k) {
			return fmt.Errorf("%w: %q", ErrInvalidName, k)
		}
	}
	body, err := json.Marshal(struct {
		Secrets map[string]string `json:"secrets"`
	}{secrets})
	if err != nil {
		return fmt.Errorf("guest: secrets: %w", err)
	}
	opCtx, cancel := context.WithTimeout(ctx, DefaultSetupTimeout)
	defer cancel()
	out := &LimitedBuffer{Limit: maxSecretsReply}
	code, err := c.run(opCtx, runSpec{request: "subsystem", arg: "smolvm-secrets", stdin: bytes.NewReader(body), stdout: out})
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: no answer within %s", ErrUnresponsive, DefaultSetupTimeout)
	}
	if err != nil {
		return fmt.Errorf("guest: secrets: %w", err)
	}
	var resp struct {
		Count *int   `json:"count"`
		Error string `json:"error"`
	}
	if out.Truncated || json.Unmarshal(out.Bytes(), &resp) != nil {
		return fmt.Errorf("guest: secrets: unreadable reply (exit status %d)", code)
	}
	if resp.Error != "" || code != 0 || resp.Count == nil {
		return fmt.Errorf("guest: secrets: guest says: %.200s (exit status %d)", resp.Error, code)
	}
	if *resp.Count != len(secrets) {
		return fmt.Errorf("guest: secrets: guest took %d of %d", *resp.Count, len(secrets))
	}
	return nil
}
