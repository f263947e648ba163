package smolvm

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/smolvm/smolvm/internal/guest"
)

// TestAgentError: the agent's refusals match the root sentinels and keep
// the agent's message as it is.
func TestAgentError(t *testing.T) {
	tests := []struct {
		kind string
		want []error
	}{
		{"not_found", []error{ErrNotFound, fs.ErrNotExist}},
		{"invalid", []error{ErrInvalid}},
		{"limit", []error{ErrInvalid}},
		{"exited", []error{ErrProcessExited}},
		{"permission", []error{ErrInvalid, fs.ErrPermission}},
	}
	for _, tt := range tests {
		ce := &guest.CommandError{Kind: tt.kind, Message: "the message"}
		err := opError("run", "vm1", agentError(fmt.Errorf("guest: exec: %w", ce)))
		for _, w := range tt.want {
			if !errors.Is(err, w) {
				t.Errorf("%s: %v does not match %v", tt.kind, err, w)
			}
		}
		var got *guest.CommandError
		if !errors.As(err, &got) || err.Error() != `vm "vm1": run: the message` && err.Error() != `vm "vm1": run: guest: exec: the message` {
			t.Errorf("%s: %q", tt.kind, err)
		}
	}
}
