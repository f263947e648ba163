// Package statedir makes smolvm's state directory private to its user:
// directories 0700, files 0600, whichever entry point creates them first.
// The database holds the VMs' env values and the directory their SSH keys,
// disks and consoles.
package statedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Modes of everything under the state directory.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// Ensure creates home (and missing parents) 0700. A home that exists with
// group or other access is tightened to 0700 (whatever was under it was
// reachable before, not after); one owned by another user is refused,
// since that user could swap anything under it.
func Ensure(home string) error {
	if err := os.MkdirAll(home, DirMode); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Stat(home)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", home)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state directory %s belongs to uid %d, not to this user (uid %d): use a directory of your own (--home or SMOLVM_HOME)", home, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(home, DirMode); err != nil {
			return fmt.Errorf("state directory %s is open to other users and cannot be made private: %w", home, err)
		}
	}
	return nil
}

// MkdirAll creates dir, under home, with its missing parents 0700,
// making sure home itself is private first.
func MkdirAll(home, dir string) error {
	if err := Ensure(home); err != nil {
		return err
	}
	return os.MkdirAll(dir, DirMode)
}

// Tighten drops group and other access from the file at path, if it
// exists: files made before smolvm kept its state private.
func Tighten(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		return os.Chmod(path, fi.Mode().Perm()&^0o077)
	}
	return nil
}

// Walk reports every file and directory under home that group or other
// users can read, write or enter (sockets: write, which connecting
// needs). It is what tests and doctor check.
func Walk(home string) ([]string, error) {
	var loose []string
	err := filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mask := fs.FileMode(0o077)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return nil
		case fi.Mode()&fs.ModeSocket != 0:
			mask = 0o022
		}
		if fi.Mode().Perm()&mask != 0 {
			loose = append(loose, fmt.Sprintf("%s (%v)", p, fi.Mode()))
		}
		return nil
	})
	return loose, err
}
