package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// Limits on an argv request, which the host (or anything holding its key)
// sends: a command line the kernel would refuse anyway is refused early.
const (
	maxArgvRequest = 1 << 20 // bytes of JSON
	maxArgs        = 4096
)

// argvSpec is a command to run without a shell: the JSON payload of the
// "exec-argv@smolvm" session request and of a smolvm-proc start.
type argvSpec struct {
	// Argv is the program and its arguments; Argv[0] is looked up in the
	// command's PATH unless it holds a slash. Exactly one of Argv and
	// Shell is set.
	Argv []string `json:"argv,omitempty"`
	// Shell is a command line for the server's shell (`SHELL -c Shell`).
	Shell string `json:"shell,omitempty"`
	// Dir is the working directory; empty = the user's home, else /.
	Dir string `json:"dir,omitempty"`
	// User is a name from /etc/passwd or a numeric uid; empty = root.
	User string `json:"user,omitempty"`
	// Env adds to (and overrides) the environment.
	Env map[string]string `json:"env,omitempty"`
}

// cmdError is a failure to start a command, told to the host with a kind
// it can match on: "not_found" (program, directory or user), "permission",
// "invalid" or "failed".
type cmdError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func (e *cmdError) Error() string { return e.Message }

func errKind(kind, format string, args ...any) *cmdError {
	return &cmdError{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// asCmdError gives any error a kind.
func asCmdError(err error) *cmdError {
	var ce *cmdError
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, fs.ErrNotExist):
		return &cmdError{Kind: "not_found", Message: err.Error()}
	case errors.Is(err, fs.ErrPermission):
		return &cmdError{Kind: "permission", Message: err.Error()}
	}
	return &cmdError{Kind: "failed", Message: err.Error()}
}

func parseArgvSpec(payload []byte) (*argvSpec, error) {
	var wire struct{ S string }
	if err := ssh.Unmarshal(payload, &wire); err != nil {
		return nil, errKind("invalid", "malformed exec-argv request: %v", err)
	}
	if len(wire.S) > maxArgvRequest {
		return nil, errKind("invalid", "exec-argv request of %d bytes; at most %d", len(wire.S), maxArgvRequest)
	}
	var spec argvSpec
	if err := json.Unmarshal([]byte(wire.S), &spec); err != nil {
		return nil, errKind("invalid", "malformed exec-argv request: %v", err)
	}
	return &spec, nil
}

func (sp *argvSpec) validate() error {
	switch {
	case len(sp.Argv) == 0 && sp.Shell == "":
		return errKind("invalid", "no command: give argv or a shell command")
	case len(sp.Argv) > 0 && sp.Shell != "":
		return errKind("invalid", "give argv or a shell command, not both")
	case len(sp.Argv) > maxArgs:
		return errKind("invalid", "%d arguments; at most %d", len(sp.Argv), maxArgs)
	case len(sp.Argv) > 0 && sp.Argv[0] == "":
		return errKind("invalid", "empty program name")
	}
	for _, a := range append(append([]string{}, sp.Argv...), sp.Shell, sp.Dir, sp.User) {
		if strings.IndexByte(a, 0) >= 0 {
			return errKind("invalid", "NUL byte in the command, directory or user")
		}
	}
	for k, v := range sp.Env {
		if !validEnvEntry(k, v) {
			return errKind("invalid", "invalid environment variable %q", k)
		}
	}
	return nil
}

// account is a user a command runs as.
type account struct {
	name     string
	uid, gid uint32
	home     string
}

// lookupUser finds name (or a numeric uid) in passwdPath; a uid that has
// no entry runs with gid = uid and home /.
func lookupUser(passwdPath, name string) (*account, error) {
	if name == "" || name == "root" || name == "0" {
		return nil, nil
	}
	uid, numErr := strconv.ParseUint(name, 10, 32)
	f, err := os.Open(passwdPath)
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) < 7 {
				continue
			}
			u, err1 := strconv.ParseUint(fields[2], 10, 32)
			g, err2 := strconv.ParseUint(fields[3], 10, 32)
			if err1 != nil || err2 != nil {
				continue
			}
			if fields[0] == name || (numErr == nil && u == uid) {
				return &account{name: fields[0], uid: uint32(u), gid: uint32(g), home: fields[5]}, nil
			}
		}
	}
	if numErr == nil {
		return &account{name: name, uid: uint32(uid), gid: uint32(uid), home: "/"}, nil
	}
	return nil, errKind("not_found", "no user %q in the guest's %s; give a user it has or a numeric uid", name, passwdPath)
}

// lookPath finds prog as a shell would: as given when it holds a slash
// (relative to dir), else in each directory of path.
func lookPath(prog, path, dir string) (string, error) {
	check := func(p string) error {
		full := p
		if !filepath.IsAbs(full) {
			full = filepath.Join(dir, full)
		}
		fi, err := os.Stat(full)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return errKind("permission", "%s is a directory", p)
		}
		if fi.Mode()&0o111 == 0 {
			return errKind("permission", "%s is not executable", p)
		}
		return nil
	}
	if strings.Contains(prog, "/") {
		if err := check(prog); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", errKind("not_found", "program %s not found in the guest", prog)
			}
			return "", asCmdError(err)
		}
		return prog, nil
	}
	var found error
	for d := range strings.SplitSeq(path, ":") {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, prog)
		err := check(p)
		if err == nil {
			return p, nil
		}
		if found == nil && !errors.Is(err, fs.ErrNotExist) {
			found = err
		}
	}
	if found != nil {
		return "", asCmdError(found)
	}
	return "", errKind("not_found", "program %q not found in the guest's PATH (%s)", prog, path)
}

// command builds the exec.Cmd for sp: the environment as for shell
// commands (plus sp.Env, and HOME/USER of sp.User), the user's
// credentials, the working directory and the resolved program. term is
// the pty's TERM, if any; sessionEnv the session's env requests.
func (s *Server) command(sp *argvSpec, term string, sessionEnv []string) (*exec.Cmd, error) {
	if err := sp.validate(); err != nil {
		return nil, err
	}
	acct, err := lookupUser(passwdFile, sp.User)
	if err != nil {
		return nil, err
	}
	stored, err := s.env.load()
	if err != nil {
		s.log.Warn("ssh session: ignoring env file", "err", err)
	}
	home := s.homeDir
	extra := append([]string{}, sessionEnv...)
	if acct != nil {
		home = acct.home
		extra = append(extra, "USER="+acct.name, "LOGNAME="+acct.name)
	}
	for k, v := range sp.Env {
		extra = append(extra, k+"="+v)
	}
	env := buildEnv(home, s.shell, term, s.commandVars(stored), extra) // start secrets too

	dir := sp.Dir
	if dir == "" {
		dir = home
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	} else if fi, err := os.Stat(dir); err != nil {
		return nil, errKind("not_found", "working directory %s: %v", dir, errors.Unwrap(err))
	} else if !fi.IsDir() {
		return nil, errKind("invalid", "working directory %s is not a directory", dir)
	}

	argv := sp.Argv
	if sp.Shell != "" {
		argv = []string{s.shell, "-c", sp.Shell}
	}
	path := defaultPath
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = p
		}
	}
	prog, err := lookPath(argv[0], path, dir)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:        prog,
		Args:        argv,
		Dir:         dir,
		Env:         env,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if acct != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid}
	}
	return cmd, nil
}

// startArgv is the "exec-argv@smolvm" request: like "exec", but the
// command is an argv run without a shell (or a shell string with a
// directory and a user). A command that cannot start is still answered
// with success, then reported with an "error@smolvm" request carrying a
// JSON cmdError and a closed channel: a plain refusal could not say why.
func (s *session) startArgv(payload []byte) (func(), error) {
	begin, err := func() (func(), error) {
		sp, err := parseArgvSpec(payload)
		if err != nil {
			return nil, err
		}
		var term string
		if s.pty != nil {
			term = s.pty.term
		}
		cmd, err := s.srv.command(sp, term, s.env)
		if err != nil {
			return nil, err
		}
		if s.pty != nil {
			return s.startPTY(cmd)
		}
		return s.startPipes(cmd)
	}()
	if err == nil {
		return begin, nil
	}
	ce := asCmdError(err)
	return func() {
		msg, _ := json.Marshal(ce)
		_, _ = s.ch.SendRequest("error@smolvm", false, ssh.Marshal(struct{ S string }{string(msg)}))
		_ = s.ch.Close()
	}, nil
}
