package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/smolvm/smolvm/internal/shell"
)

// maxEnvRequest bounds what a smolvm-env client may make us buffer.
const maxEnvRequest = 4 << 20

// envStore is the persistent environment: a JSON object in path, mirrored
// as a shell script in profilePath. mu serialises read-modify-write cycles
// within this process; the files are replaced atomically so readers never
// see a torn file.
type envStore struct {
	path        string
	profilePath string
	mu          sync.Mutex
}

// envRequest is the one JSON message a smolvm-env client writes.
type envRequest struct {
	Op   string            `json:"op"` // "set", "unset" or "list"
	Vars map[string]string `json:"vars,omitempty"`
	Keys []string          `json:"keys,omitempty"`
}

// load returns the stored variables; a missing file is an empty store.
func (e *envStore) load() (map[string]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.loadLocked()
}

func (e *envStore) loadLocked() (map[string]string, error) {
	data, err := os.ReadFile(e.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read env file: %w", err)
	}
	vars := map[string]string{}
	if len(bytes.TrimSpace(data)) == 0 {
		return vars, nil
	}
	if err := json.Unmarshal(data, &vars); err != nil {
		return nil, fmt.Errorf("parse env file %s: %w", e.path, err)
	}
	return vars, nil
}

// apply performs req and returns the resulting store.
func (e *envStore) apply(req envRequest) (map[string]string, error) {
	switch req.Op {
	case "list":
		return e.load()
	case "set":
		for k, v := range req.Vars {
			if err := checkEnvName(k); err != nil {
				return nil, err
			}
			if strings.IndexByte(v, 0) >= 0 {
				return nil, fmt.Errorf("value of %s contains a NUL byte", k)
			}
		}
	case "unset":
		for _, k := range req.Keys {
			if err := checkEnvName(k); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("unknown op %q (want set, unset or list)", req.Op)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	vars, err := e.loadLocked()
	if err != nil {
		return nil, err
	}
	maps.Copy(vars, req.Vars)
	for _, k := range req.Keys {
		delete(vars, k)
	}
	data, err := json.MarshalIndent(vars, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(e.path, append(data, '\n')); err != nil {
		return nil, fmt.Errorf("write env file: %w", err)
	}
	// The profile copy is a convenience for login shells; only mirror it
	// where the root filesystem has a profile.d to source it from.
	if st, err := os.Stat(filepath.Dir(e.profilePath)); err == nil && st.IsDir() {
		if err := writeFileAtomic(e.profilePath, profileScript(vars)); err != nil {
			return nil, fmt.Errorf("write profile file: %w", err)
		}
	}
	return vars, nil
}

// checkEnvName enforces POSIX portable variable names, which every shell
// can export and which cannot smuggle '=' into the environment.
func checkEnvName(name string) error {
	if !validEnvName(name) {
		return fmt.Errorf("invalid variable name %q: must match [A-Za-z_][A-Za-z0-9_]*", name)
	}
	return nil
}

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range []byte(name) {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}

// validEnvEntry accepts what can be put in an environment at all; session
// "env" requests are looser than the store (OpenSSH forwards LC_* etc.).
func validEnvEntry(name, value string) bool {
	return name != "" && !strings.ContainsAny(name, "=\x00") && !strings.ContainsRune(value, 0)
}

// profileScript renders vars as a POSIX sh script of single-quoted exports.
func profileScript(vars map[string]string) []byte {
	var b strings.Builder
	b.WriteString("# Managed by smolvm (smolvm-env); changes here are overwritten.\n")
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shell.Quote(vars[k]))
	}
	return []byte(b.String())
}

// writeFileAtomic replaces path with data (mode 0600), creating its
// directory (0700) if needed. It writes a temporary file in the same
// directory, syncs it and renames it over path, then syncs the directory,
// so a crash leaves either the old or the new content.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil // renamed; only durability of the rename is in doubt
	}
	defer d.Close()
	_ = d.Sync()
	return nil
}

// startEnv serves the smolvm-env subsystem: one JSON request read to EOF,
// one JSON reply on stdout, exit status 0 on success and 1 on error.
func (s *session) startEnv() (func(), error) {
	return func() {
		s.wg.Go(func() {
			vars, err := s.serveEnv()
			var reply any
			code := uint32(0)
			if err != nil {
				reply = struct {
					Error string `json:"error"`
				}{err.Error()}
				code = 1
			} else {
				reply = struct {
					Env map[string]string `json:"env"`
				}{vars}
			}
			data, _ := json.Marshal(reply)
			_, _ = s.ch.Write(append(data, '\n'))
			s.sendExitStatus(code)
			_ = s.ch.Close()
		})
	}, nil
}

func (s *session) serveEnv() (map[string]string, error) {
	data, err := io.ReadAll(io.LimitReader(s.ch, maxEnvRequest+1))
	if err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	if len(data) > maxEnvRequest {
		return nil, fmt.Errorf("request larger than %d bytes", maxEnvRequest)
	}
	var req envRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("parse request: %w", err)
	}
	vars, err := s.srv.env.apply(req)
	if err != nil {
		return nil, err
	}
	s.log.Debug("ssh session: env", "op", req.Op, "count", len(vars))
	return vars, nil
}
