package smolvm

import (
	"context"
	"fmt"
	"maps"

	"github.com/smolvm/smolvm/internal/store"
)

// Secrets are environment variables a command in the guest sees that
// smolvm never writes down: not to its database, its logs, the VM's
// initramfs or disk, or any other file of the host. They travel over the
// VM's SSH connection only.
//
// For one command: WithSecret, WithSecrets (ExecOptions.Secrets). At
// start: WithStartSecrets; the guest's agent keeps them in its memory and
// adds them to every command's environment until the VM stops (give them
// again at the next start).
//
// Guest memory holding a secret must not reach the host's disk either, so
// a VM given any secret since it started refuses memory snapshots,
// hibernation and Fork (ErrInvalid) until it is stopped; a disk-only
// snapshot is allowed. A lifetime's on-expire hibernate stops it instead.

// WithSecret sets one secret environment variable for this command only.
func WithSecret(name, value string) RunOption {
	return WithSecrets(map[string]string{name: value})
}

// WithSecrets sets secret environment variables for this command only.
func WithSecrets(secrets map[string]string) RunOption {
	return func(o *ExecOptions) {
		if o.Secrets == nil {
			o.Secrets = map[string]string{}
		}
		maps.Copy(o.Secrets, secrets)
	}
}

// WithStartSecrets hands the VM secrets at each Start through this handle
// (New, NewFromConfig, Start, FromID...): every command in the guest sees
// them as environment variables until the VM stops. See Secrets above.
func WithStartSecrets(secrets map[string]string) Option {
	return func(s *settings) {
		if s.secrets == nil {
			s.secrets = map[string]string{}
		}
		maps.Copy(s.secrets, secrets)
	}
}

// holdsSecrets reports whether the VM's guest memory has held a secret
// since its current process started.
func (v *VM) holdsSecrets() bool {
	rt := v.runtime()
	st := v.Info().State
	return (st == StateRunning || st == StatePaused) && rt.SecretsProc != 0 && rt.SecretsProc == rt.ProcStart
}

// markSecrets records, before the first secret goes in, that the guest's
// memory holds secrets. Unless locked (the caller holds the VM's lock),
// it takes the lock to do so: a snapshot under way finishes first, and
// one that begins after sees the mark.
func (v *VM) markSecrets(ctx context.Context, locked bool) error {
	// The row, not this handle's copy: another process may have
	// restarted the VM since, and the mark is per process.
	if err := v.load(ctx); err != nil {
		return err
	}
	if v.holdsSecrets() {
		return nil
	}
	if !locked {
		unlock, err := v.lock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
	}
	return v.update(ctx, func(_ *store.VM, rt *runtimeRecord) error {
		rt.SecretsProc = rt.ProcStart
		return nil
	})
}

// refuseSecrets is the check of every capture of guest memory.
func (v *VM) refuseSecrets(what string) error {
	if !v.holdsSecrets() {
		return nil
	}
	return &ValidationError{Field: "secrets", Value: v.id, Reason: fmt.Sprintf(
		"the VM was given secrets since it started, which its memory may still hold, and %s would write that memory to the host's disk: stop the VM and start it again without secrets first (a disk-only snapshot works meanwhile)", what)}
}

// pushStartSecrets hands the guest the handle's start secrets; the VM's
// lock is held (start).
func (v *VM) pushStartSecrets(ctx context.Context) error {
	if len(v.s.secrets) == 0 {
		return nil
	}
	if err := ValidateEnv(v.s.secrets); err != nil {
		return err
	}
	if err := v.markSecrets(ctx, true); err != nil {
		return err
	}
	c, err := v.conn(ctx)
	if err != nil {
		return err
	}
	if err := c.SetSecrets(ctx, v.s.secrets); err != nil {
		return fmt.Errorf("start secrets: %w", err)
	}
	v.log().Debug("start: secrets handed over", "count", len(v.s.secrets))
	return nil
}

// withSecrets returns env with secrets laid over it, for one command.
func withSecrets(env, secrets map[string]string) map[string]string {
	if len(secrets) == 0 {
		return env
	}
	out := make(map[string]string, len(env)+len(secrets))
	maps.Copy(out, env)
	maps.Copy(out, secrets)
	return out
}
