package egress

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// RelayCommand is the hidden smolvm command that QEMU runs for each guest
// connection to ProxyGuestAddr: it joins its stdin/stdout (the guest's
// connection) to the VM's proxy socket.
const RelayCommand = "egress-relay"

// rootSocketDir holds, when smolvm runs as root, a directory per VM for
// its proxy socket: QEMU then runs as a user of its own, who cannot reach
// root's state directory.
const rootSocketDir = "/run/smolvm/egress"

// ProxySocket makes the place of a user-mode VM's proxy socket and
// returns its path. QEMU's user (uid, gid; nil = this process's) must
// reach it and nobody else: as root it is /run/smolvm/egress/TAG/ (mode
// 0750, group gid), else in the VM's own directory.
func ProxySocket(vmDir, tag string, gid *int) (string, error) {
	if gid == nil {
		p := filepath.Join(vmDir, "egress.sock")
		if len(p) > 100 {
			return "", fmt.Errorf("egress proxy: socket path %s is too long for a unix socket: use a shorter state directory (SMOLVM_HOME)", p)
		}
		return p, nil
	}
	for _, d := range []string{filepath.Dir(rootSocketDir), rootSocketDir} {
		if err := os.Mkdir(d, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("egress proxy: %w", err)
		}
	}
	dir := filepath.Join(rootSocketDir, tag)
	os.RemoveAll(dir) // a killed run's
	if err := os.Mkdir(dir, 0o750); err != nil {
		return "", fmt.Errorf("egress proxy: %w", err)
	}
	if err := os.Chown(dir, 0, *gid); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("egress proxy: %w", err)
	}
	return filepath.Join(dir, "s"), nil
}

// RemoveProxySocket removes what ProxySocket made.
func RemoveProxySocket(vmDir, tag string) {
	os.Remove(filepath.Join(vmDir, "egress.sock"))
	if tag != "" {
		os.RemoveAll(filepath.Join(rootSocketDir, tag))
	}
}

// RelayArgv is the command QEMU runs, as uid/gid (nil = this process's
// user), for each guest connection to the proxy: smolvmExe's relay or
// socat, whichever that user may run, else none (an error saying why).
func RelayArgv(smolvmExe, socket string, uid, gid *int) ([]string, error) {
	own := func() ([]string, bool) {
		if smolvmExe != "" && runnableBy(smolvmExe, uid, gid) {
			return []string{smolvmExe, RelayCommand, socket}, true
		}
		return nil, false
	}
	socat := func() ([]string, bool) {
		if p, err := exec.LookPath("socat"); err == nil && runnableBy(p, uid, gid) {
			// -lf: its messages would reach the guest (its stderr). -t:
			// after one side ends, how long the other may still send
			// (a half-closed client waiting for its answer).
			return []string{p, "-lf", os.DevNull, "-t", "30", "STDIO", "UNIX-CONNECT:" + socket}, true
		}
		return nil, false
	}
	// For a user of QEMU's own (its processes bounded, threads included)
	// socat first: one thread per relay where Go's runtime has several.
	first, second := own, socat
	if uid != nil {
		first, second = socat, own
	}
	if argv, ok := first(); ok {
		return argv, nil
	}
	if argv, ok := second(); ok {
		return argv, nil
	}
	who := "this user"
	if uid != nil {
		who = "uid " + strconv.Itoa(*uid) + " (QEMU's unprivileged user)"
	}
	return nil, fmt.Errorf("egress proxy: no relay %s may run: install socat, or put the smolvm CLI where everyone may run it and point SMOLVM_KEEPER at it", who)
}

// runnableBy reports whether the user (nil = this process's) may run
// path: search permission on each directory above it, execute on it.
func runnableBy(path string, uid, gid *int) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	if uid == nil {
		return syscall.Access(abs, 0x1) == nil // X_OK
	}
	may := func(p string) bool {
		fi, err := os.Stat(p)
		if err != nil {
			return false
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		switch {
		case int(st.Uid) == *uid:
			return m&0o100 != 0
		case gid != nil && int(st.Gid) == *gid:
			return m&0o010 != 0
		}
		return m&0o001 != 0
	}
	for p := abs; ; p = filepath.Dir(p) {
		if !may(p) {
			return false
		}
		if p == "/" {
			return true
		}
	}
}
