package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/smolvm/smolvm/internal/shacrypt"
	"github.com/smolvm/smolvm/internal/untar"
	"golang.org/x/crypto/bcrypt"
)

// Files in the image the agent reads.
const (
	// RootPasswordFile holds the bcrypt hash of root's password; the agent
	// offers password logins only when it exists.
	RootPasswordFile = "/etc/smolvm/root_password"
	// AuthorizedKeysFile holds the extra keys root accepts (the agent's own
	// file, so keys an image happens to carry in /root/.ssh do not open
	// it up).
	AuthorizedKeysFile = "/etc/smolvm/authorized_keys"
	// EnvFile is the guest's persistent environment (a JSON object).
	EnvFile = "/etc/smolvm/env.json"
)

// customize makes the unpacked tree SSH-ready for the agent: the mount
// points it needs, root's password and keys, and an OCI image's
// environment. Every path is resolved inside the tree, so an image's own
// symlinks cannot point these writes at the host.
func customize(dir string, opts BuildOptions, img *Image, rep *reporter) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	t := tree{root}
	for _, d := range []struct {
		name string
		mode fs.FileMode
	}{
		{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
		{"tmp", 0o777 | fs.ModeSticky}, {"root", 0o700}, {"etc/smolvm", 0o700},
	} {
		if err := t.mkdir(d.name, d.mode); err != nil {
			return fmt.Errorf("prepare /%s: %w", d.name, err)
		}
	}
	// Only what this build asks for: an image must not bring its own
	// password or keys for the agent.
	for _, f := range []string{RootPasswordFile, AuthorizedKeysFile} {
		if err := t.remove(f); err != nil {
			return fmt.Errorf("clear %s: %w", f, err)
		}
	}
	if opts.Password != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		if err := t.write(RootPasswordFile, append(hash, '\n'), 0o600); err != nil {
			return fmt.Errorf("root password: %w", err)
		}
		if err := t.setShadow(opts.Password); err != nil {
			return fmt.Errorf("root password: /etc/shadow: %w", err)
		}
	}
	if len(opts.AuthorizedKeys) > 0 {
		keys := strings.Join(opts.AuthorizedKeys, "\n")
		if err := t.write(AuthorizedKeysFile, []byte(strings.TrimSpace(keys)+"\n"), 0o600); err != nil {
			return fmt.Errorf("authorized keys: %w", err)
		}
	}
	if len(img.Env) > 0 {
		env := map[string]string{}
		for _, kv := range img.Env {
			if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
				env[k] = v
			}
		}
		data, err := json.Marshal(env)
		if err != nil {
			return err
		}
		if err := t.write(EnvFile, data, 0o600); err != nil {
			return fmt.Errorf("environment: %w", err)
		}
	}
	if !t.exists("bin/sh") {
		rep.step("warning: %v", errNoShell)
	}
	return nil
}

// tree edits files in an unpacked root filesystem.
type tree struct{ root *os.Root }

// resolve maps an absolute guest path to one inside the tree, following
// the tree's symlinks as the guest would.
func (t tree) resolve(p string) (string, error) {
	dir, err := untar.Resolve(t.root, strings.TrimPrefix(path.Dir(p), "/"))
	if err != nil {
		return "", err
	}
	return path.Join(dir, path.Base(p)), nil
}

func (t tree) exists(p string) bool {
	full, err := untar.Resolve(t.root, strings.TrimPrefix(p, "/"))
	if err != nil {
		return false
	}
	_, err = t.root.Stat(full)
	return err == nil
}

// mkdir makes a directory with mode unless one is there already.
func (t tree) mkdir(p string, mode fs.FileMode) error {
	full, err := untar.Resolve(t.root, strings.TrimPrefix(p, "/"))
	if err != nil {
		return err
	}
	if fi, err := t.root.Stat(full); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("/%s exists and is not a directory", p)
		}
		return nil
	}
	if err := t.root.MkdirAll(full, 0o755); err != nil {
		return err
	}
	if err := t.root.Lchown(full, 0, 0); err != nil && os.Geteuid() == 0 {
		return err
	}
	return t.root.Chmod(full, mode)
}

// remove deletes the file at p, if any.
func (t tree) remove(p string) error {
	full, err := t.resolve(p)
	if err != nil {
		return err
	}
	if err := t.root.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// write replaces the file at p (never writing through a symlink there).
func (t tree) write(p string, data []byte, mode fs.FileMode) error {
	full, err := t.resolve(p)
	if err != nil {
		return err
	}
	if err := t.root.MkdirAll(path.Dir(full), 0o755); err != nil {
		return err
	}
	tmp := full + ".smolvm-new"
	t.root.Remove(tmp)
	f, err := t.root.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = t.root.Rename(tmp, full)
	}
	if err != nil {
		t.root.Remove(tmp)
	}
	return err
}

// setShadow sets root's password in /etc/shadow (SHA-512 crypt), so
// console logins and su work too. A tree without /etc/shadow is left
// without one: the agent's own password file is what SSH checks.
func (t tree) setShadow(password string) error {
	full, err := t.resolve("/etc/shadow")
	if err != nil {
		return err
	}
	data, err := t.root.ReadFile(full)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	hash, err := shacrypt.Hash(password)
	if err != nil {
		return err
	}
	lines := strings.SplitAfter(string(data), "\n")
	found := false
	for i, l := range lines {
		f := strings.Split(strings.TrimRight(l, "\n"), ":")
		if len(f) >= 2 && f[0] == "root" {
			f[1] = hash
			lines[i] = strings.Join(f, ":") + "\n"
			found = true
		}
	}
	if !found {
		if n := len(lines); n > 0 && lines[n-1] != "" && !strings.HasSuffix(lines[n-1], "\n") {
			lines[n-1] += "\n"
		}
		lines = append(lines, "root:"+hash+":::::::\n")
	}
	fi, err := t.root.Stat(full)
	if err != nil {
		return err
	}
	// Rewrite in place: keeps the file's owner and group (shadow on Debian).
	f, err := t.root.OpenFile(full, os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = f.WriteString(strings.Join(lines, ""))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
