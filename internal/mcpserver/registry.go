package mcpserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// registry remembers, in $SMOLVM_HOME/mcp/, which VMs and snapshots were
// made through MCP, so that the next session (or another process) knows
// which ones an agent may touch. One small JSON file per entry, written to
// a temporary name and renamed: concurrent servers never see half a
// record and need no lock.
type registry struct{ dir string }

// vmRecord is one VM made through MCP. CreatedAt is the VM's own, so a
// VM deleted behind MCP's back and re-created by the user under the same
// id does not inherit the record.
type vmRecord struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	// Since is when the record was first written. A record written before
	// its VM existed (CreatedAt zero) claims only a VM made after it.
	Since time.Time `json:"since"`
	// Keep: the agent asked to keep it past its session.
	Keep bool `json:"keep"`
	// Owner is the server process whose session made an unkept VM; a
	// record whose owner is gone is an orphan of a killed server.
	OwnerPID   int    `json:"owner_pid,omitempty"`
	OwnerStart uint64 `json:"owner_start,omitempty"`
}

// snapRecord is one snapshot made through MCP.
type snapRecord struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// namePattern is what VM ids and snapshot names look like (the SDK's id
// rule). Anything else is never used as a file name here.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (r registry) path(kind, name string) (string, error) {
	if !namePattern.MatchString(name) {
		return "", fmt.Errorf("bad name %q", name)
	}
	return filepath.Join(r.dir, kind, name+".json"), nil
}

func (r registry) put(kind, name string, v any) error {
	p, err := r.path(kind, name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("mcp registry: %w", err)
	}
	return nil
}

func (r registry) get(kind, name string, v any) (bool, error) {
	p, err := r.path(kind, name)
	if err != nil {
		return false, nil // not a name anything was ever stored under
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mcp registry: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("mcp registry %s: %w", p, err)
	}
	return true, nil
}

func (r registry) remove(kind, name string) {
	if p, err := r.path(kind, name); err == nil {
		os.Remove(p)
	}
}

func (r registry) names(kind string) []string {
	ents, _ := os.ReadDir(filepath.Join(r.dir, kind))
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && namePattern.MatchString(n) {
			out = append(out, n)
		}
	}
	return out
}

func (r registry) putVM(rec vmRecord) error { return r.put("vms", rec.ID, rec) }

func (r registry) vm(id string) (vmRecord, bool, error) {
	var rec vmRecord
	ok, err := r.get("vms", id, &rec)
	return rec, ok, err
}

func (r registry) removeVM(id string) { r.remove("vms", id) }

func (r registry) putSnapshot(rec snapRecord) error { return r.put("snapshots", rec.Name, rec) }

func (r registry) snapshot(name string) (snapRecord, bool, error) {
	var rec snapRecord
	ok, err := r.get("snapshots", name, &rec)
	return rec, ok, err
}

func (r registry) removeSnapshot(name string) { r.remove("snapshots", name) }
