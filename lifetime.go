package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/keeper"
	"github.com/smolvm/smolvm/internal/store"
)

// What ends a VM whose lifetime is over (VMConfig.OnExpire).
const (
	ExpireStop      = "stop"      // shut down; disk and config stay (the default)
	ExpireHibernate = "hibernate" // to disk, as Pause(ToDisk); else stopped
	ExpireDelete    = "delete"    // deleted, as Delete
)

// MaxTTL bounds a lifetime: longer is a mistake (a unit missing?).
const MaxTTL = 10 * 365 * 24 * time.Hour

// WithTTL gives the VM a lifetime (VMConfig.TTL) and what ends it
// (VMConfig.OnExpire; "" = ExpireStop).
func WithTTL(ttl time.Duration, onExpire string) Option {
	return withConfig(func(c *VMConfig) { c.TTL, c.OnExpire = ttl, onExpire })
}

func (c VMConfig) validateLifetime() []error {
	var errs []error
	bad := func(field string, v any, reason string) {
		errs = append(errs, &ValidationError{Field: field, Value: v, Reason: reason})
	}
	switch {
	case c.TTL < 0:
		bad("ttl", c.TTL, "must not be negative; 0 means no lifetime")
	case c.TTL > MaxTTL:
		bad("ttl", c.TTL, fmt.Sprintf("must be at most %s", MaxTTL))
	}
	if err := checkOnExpire(c.OnExpire); err != nil {
		errs = append(errs, err)
	}
	return errs
}

func checkOnExpire(s string) error {
	switch s {
	case "", ExpireStop, ExpireHibernate, ExpireDelete:
		return nil
	}
	return &ValidationError{Field: "on expire", Value: fmt.Sprintf("%q", s), Reason: "use stop, hibernate or delete"}
}

// withLifetime sets ExpiresAt from TTL, counted from now (create).
func (c VMConfig) withLifetime(now time.Time) VMConfig {
	if c.TTL > 0 && c.ExpiresAt.IsZero() {
		c.ExpiresAt = now.Add(c.TTL).UTC().Round(time.Millisecond)
	}
	return c
}

// expired reports whether c's lifetime is over at now.
func (c VMConfig) expired(now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

func (c VMConfig) onExpire() string {
	if c.OnExpire == "" {
		return ExpireStop
	}
	return c.OnExpire
}

// SetTTL gives the VM a new lifetime, ttl from now (0 = none), and, when
// onExpire is not "", a new OnExpire. The VM's keeper is told at once. A
// VM whose lifetime ended (stopped, or hibernated) may start again once
// it has a new one. The lifetime lives on the host only: nothing in the
// guest can read or change it.
func (v *VM) SetTTL(ctx context.Context, ttl time.Duration, onExpire string) error {
	c := VMConfig{TTL: ttl, OnExpire: onExpire}
	if errs := c.validateLifetime(); len(errs) > 0 {
		return opError("ttl", v.id, errs[0])
	}
	unlock, err := v.lock(ctx)
	if err != nil {
		return opError("ttl", v.id, err)
	}
	defer unlock()
	now := time.Now()
	err = v.update(ctx, func(row *store.VM, _ *runtimeRecord) error {
		var cfg VMConfig
		if err := json.Unmarshal(row.Config, &cfg); err != nil {
			return err
		}
		cfg.TTL, cfg.ExpiresAt = ttl, time.Time{}
		cfg = cfg.withLifetime(now)
		if onExpire != "" {
			cfg.OnExpire = onExpire
		}
		b, err := json.Marshal(cfg)
		row.Config = b
		return err
	})
	if err != nil {
		return opError("ttl", v.id, err)
	}
	if err := keeper.Notify(v.paths.dir); err != nil {
		v.log().Warn("ttl: notify the keeper", "err", err)
	}
	v.log().Info("lifetime set", "ttl", ttl, "expires_at", v.Info().Config.ExpiresAt)
	return nil
}

// EnforceTTL ends the VM as its OnExpire says if its lifetime is over,
// holding its lock (a concurrent Stop, Delete or SetTTL goes before or
// after, never in between), and reports whether it was over. The keeper
// calls it at ExpiresAt; every look at a VM (FromID, List, Start) does
// the same for a VM no keeper keeps.
func (v *VM) EnforceTTL(ctx context.Context) (bool, error) {
	unlock, err := v.lock(ctx)
	if err != nil {
		return false, opError("expire", v.id, err)
	}
	defer unlock()
	over, err := v.expireLocked(ctx)
	return over, opError("expire", v.id, err)
}

// expireLocked is EnforceTTL with the VM's lock held.
func (v *VM) expireLocked(ctx context.Context) (bool, error) {
	if err := v.Refresh(ctx); err != nil {
		return false, err
	}
	info := v.Info()
	if !info.Config.expired(time.Now()) {
		return false, nil
	}
	action := info.Config.onExpire()
	log := v.log().With("expired_at", info.Config.ExpiresAt, "on_expire", action, "state", info.State)
	live := info.State == StateRunning || info.State == StatePaused
	switch action {
	case ExpireDelete:
		if err := v.delete(ctx); err != nil {
			return true, err
		}
		v.markDeleted()
		v.mu.Lock()
		v.deletedHere = true
		v.mu.Unlock()
		if from := v.runtime().FromSnapshot; from != "" {
			removeAutoSnapshot(context.WithoutCancel(ctx), v.s, from)
		}
		log.Info("lifetime over: deleted")
		return true, nil
	case ExpireHibernate:
		if !live {
			return true, nil // nothing runs; a hibernated VM stays so
		}
		err := v.hibernate(ctx)
		if err == nil {
			log.Info("lifetime over: hibernated")
			return true, nil
		}
		log.Warn("lifetime over: cannot hibernate; stopping instead", "err", err)
	}
	if live || info.State == StateHibernated || info.State == StateError {
		if err := v.stop(ctx, DefaultStopTimeout); err != nil {
			return true, err
		}
		log.Info("lifetime over: stopped")
	}
	return true, nil
}

// expireOnLook enforces a lifetime that is over, at a look (FromID,
// List), if nobody holds the VM's lock (whoever does will see to it, or
// the next look): ErrNotFound if that deleted the VM.
func (v *VM) expireOnLook(ctx context.Context) error {
	cfg := v.Info().Config
	if !cfg.expired(time.Now()) {
		return nil
	}
	try, cancel := context.WithCancel(ctx)
	cancel() // one attempt, no wait
	unlock, err := flock.Lock(try, v.paths.lock(), 0o600)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// No directory left to lock (a delete cut short): as Delete does,
		// finish removing the row.
	case err != nil:
		return nil
	default:
		defer unlock()
	}
	// Once begun, it finishes: a stop or delete cut in half leaves more
	// to mend than one not begun.
	if _, err := v.expireLocked(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	if v.Info().State == StateDeleted {
		return expiredDeleted(cfg)
	}
	return nil
}

func expiredDeleted(cfg VMConfig) error {
	return fmt.Errorf("%w: its lifetime ended at %s and it was deleted (on-expire delete)", ErrNotFound, cfg.ExpiresAt.Format(time.RFC3339))
}

// refuseExpired is Start's check, the VM's lock held: a VM whose lifetime
// is over is ended as OnExpire says and does not start.
func (v *VM) refuseExpired(ctx context.Context) error {
	cfg := v.Info().Config
	if !cfg.expired(time.Now()) {
		return nil
	}
	if _, err := v.expireLocked(ctx); err != nil {
		return err
	}
	if v.Info().State == StateDeleted {
		return expiredDeleted(cfg)
	}
	return &ValidationError{Field: "ttl", Value: cfg.ExpiresAt.Format(time.RFC3339),
		Reason: fmt.Sprintf("the VM's lifetime is over; give it a new one first (smolvm ttl %s 10m, or VM.SetTTL), or none (smolvm ttl %s 0)", v.id, v.id)}
}
