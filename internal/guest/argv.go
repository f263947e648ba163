package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/crypto/ssh"
)

// CommandError is the agent's account of a command it could not start: a
// program, directory or user that is not there, a file that is not
// executable. It matches fs.ErrNotExist (Kind "not_found") and
// fs.ErrPermission (Kind "permission").
type CommandError struct {
	Kind    string `json:"kind"` // not_found, permission, invalid, exited, limit, failed
	Message string `json:"message"`
}

func (e *CommandError) Error() string { return e.Message }

func (e *CommandError) Is(target error) bool {
	switch e.Kind {
	case "not_found":
		return target == fs.ErrNotExist
	case "permission":
		return target == fs.ErrPermission
	}
	return false
}

// ErrOldAgent: the guest's agent predates argv commands and background
// processes (a VM created with this smolvm has them).
var ErrOldAgent = errors.New("the VM's agent is older than this smolvm: it runs no argv commands or background processes")

// maxAgentError bounds an error message from the (untrusted) agent.
const maxAgentError = 4 << 10

func parseCommandError(payload []byte) *CommandError {
	var wire struct{ S string }
	ce := &CommandError{Kind: "failed", Message: "the guest could not start the command"}
	if ssh.Unmarshal(payload, &wire) != nil || len(wire.S) > maxAgentError {
		return ce
	}
	if json.Unmarshal([]byte(wire.S), ce) != nil || ce.Message == "" {
		return &CommandError{Kind: "failed", Message: "the guest could not start the command"}
	}
	return ce
}

// argvPayload is the agent's argvSpec.
type argvPayload struct {
	Argv  []string          `json:"argv,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Dir   string            `json:"dir,omitempty"`
	User  string            `json:"user,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
}

// request is the session request that runs req: plain "exec" for a shell
// command as root in its home (what any SSH server takes), else the
// agent's "exec-argv@smolvm" with a JSON payload.
func (req ExecRequest) request() (string, string, error) {
	if len(req.Argv) == 0 && req.Dir == "" && req.User == "" {
		return "exec", req.Command, nil
	}
	if len(req.Argv) > 0 && req.Command != "" {
		return "", "", errors.New("both a shell command and an argv")
	}
	if len(req.Argv) == 0 && req.Command == "" {
		return "", "", errors.New("no command")
	}
	b, err := json.Marshal(argvPayload{Argv: req.Argv, Shell: req.Command, Dir: req.Dir, User: req.User})
	if err != nil {
		return "", "", fmt.Errorf("encode argv: %w", err)
	}
	return "exec-argv@smolvm", string(b), nil
}
