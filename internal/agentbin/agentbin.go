// Package agentbin carries the guest agent (cmd/smolvm-agent) inside the
// smolvm binary, for builds with the embedagent tag (scripts/build.sh), so
// that one file on the host holds both halves.
package agentbin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/statedir"
)

// Binary returns the embedded agent, or nil when this build has none.
func Binary() []byte { return embedded }

// Extract writes the embedded agent under dir (a directory of the state
// directory, which is dir's parent), named by its hash so a new
// build never reuses an old file, and returns its path. It returns "" when
// this build has no embedded agent.
func Extract(dir string) (string, error) {
	if len(embedded) == 0 {
		return "", nil
	}
	sum := sha256.Sum256(embedded)
	path := filepath.Join(dir, "smolvm-agent-"+hex.EncodeToString(sum[:8]))
	if fi, err := os.Stat(path); err == nil && fi.Size() == int64(len(embedded)) {
		return path, nil
	}
	if err := statedir.MkdirAll(filepath.Dir(dir), dir); err != nil {
		return "", fmt.Errorf("agent: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".agent-")
	if err != nil {
		return "", fmt.Errorf("agent: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(embedded)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o700)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("agent: %w", err)
	}
	return path, nil
}
