package smolvm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/initramfs"
	"github.com/smolvm/smolvm/internal/store"
)

// A VM's persistent environment has one source of truth: VMConfig.Env in
// the state database, set at create and changed by SetEnv and UnsetEnv.
// The VM's own initramfs carries a copy as its last archive, which the
// guest agent writes into the guest's env file at every boot; SetEnv and
// UnsetEnv change the running guest, then the stored Env and that copy
// in one transaction, so a restart brings back exactly what was set and
// nothing that was unset.

// SetEnv sets persistent environment variables in the running guest; every
// later command sees them, also after a restart.
func (v *VM) SetEnv(ctx context.Context, vars map[string]string) (map[string]string, error) {
	if err := ValidateEnv(vars); err != nil {
		return nil, opError("setenv", v.id, err)
	}
	c, err := v.conn(ctx)
	if err != nil {
		return nil, opError("setenv", v.id, err)
	}
	env, err := c.SetEnv(ctx, vars)
	if err != nil {
		return nil, opError("setenv", v.id, err)
	}
	if err := v.saveEnv(ctx, func(e map[string]string) { maps.Copy(e, vars) }); err != nil {
		return nil, opError("setenv", v.id, err)
	}
	return env, nil
}

// UnsetEnv removes persistent environment variables from the guest, also
// those given at create: they stay unset after a restart.
func (v *VM) UnsetEnv(ctx context.Context, keys ...string) (map[string]string, error) {
	for _, k := range keys {
		if err := ValidateEnvName(k); err != nil {
			return nil, opError("unsetenv", v.id, err)
		}
	}
	c, err := v.conn(ctx)
	if err != nil {
		return nil, opError("unsetenv", v.id, err)
	}
	env, err := c.UnsetEnv(ctx, keys...)
	if err != nil {
		return nil, opError("unsetenv", v.id, err)
	}
	if err := v.saveEnv(ctx, func(e map[string]string) {
		for _, k := range keys {
			delete(e, k)
		}
	}); err != nil {
		return nil, opError("unsetenv", v.id, err)
	}
	return env, nil
}

// Env returns the guest's persistent environment variables: VMConfig.Env
// and any the image itself set.
func (v *VM) Env(ctx context.Context) (map[string]string, error) {
	c, err := v.conn(ctx)
	if err != nil {
		return nil, opError("env", v.id, err)
	}
	env, err := c.Env(ctx)
	return env, opError("env", v.id, err)
}

// saveEnv applies change to the stored Env and rewrites the initramfs copy
// within the same transaction, which also orders concurrent changes.
func (v *VM) saveEnv(ctx context.Context, change func(map[string]string)) error {
	err := v.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		var cfg VMConfig
		if err := json.Unmarshal(row.Config, &cfg); err != nil {
			return fmt.Errorf("stored config: %w", err)
		}
		if cfg.Env == nil {
			cfg.Env = map[string]string{}
		}
		change(cfg.Env)
		if len(cfg.Env) == 0 {
			cfg.Env = nil
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		row.Config = b
		if rt.EnvAt == 0 {
			// A VM made before the env had an archive of its own: append
			// one, which the kernel unpacks over the older copy.
			fi, err := os.Stat(v.paths.initrd())
			if err != nil {
				return err
			}
			rt.EnvAt = fi.Size()
		}
		return writeEnvArchive(v.paths.initrd(), rt.EnvAt, cfg.Env)
	})
	if err != nil {
		return fmt.Errorf("changed in the running guest, but not saved for its next start: %w", err)
	}
	return nil
}

// writeEnvArchive replaces everything in the initramfs at path from
// offset at on with an archive holding env, by writing a new file and
// renaming it over the old one, so a crash leaves one or the other.
func writeEnvArchive(path string, at int64, env map[string]string) (err error) {
	in, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".initrd-*")
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.CopyN(tmp, in, at); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := initramfs.Write(tmp, []initramfs.File{envFile(env)}); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// envFile is the initramfs file the agent reads the env from.
func envFile(env map[string]string) initramfs.File {
	if env == nil {
		env = map[string]string{}
	}
	data, _ := json.Marshal(env) // a map of strings always marshals
	return initramfs.File{Name: initramfs.EnvFile, Mode: 0o600, Data: data}
}
