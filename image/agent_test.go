package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestResolveAgent: with no agent configured and only a smolvm of
// unknown version on PATH, the builder does not take that one (it could
// speak another protocol than this host side) but builds its own from
// this module's source into the user's cache, once.
func TestResolveAgent(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not on PATH: the agent cannot be built here")
	}
	bin, cache := t.TempDir(), t.TempDir()
	data, err := os.ReadFile(testAgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "smolvm"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv(AgentEnv, "")
	// The agent cache moves; the Go build cache stays (or this compiles
	// for a minute).
	goCache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOCACHE", strings.TrimSpace(string(goCache)))
	t.Setenv("XDG_CACHE_HOME", cache)
	b := &Builder{CacheDir: t.TempDir()}
	if p := b.AgentPath(); p != "" {
		t.Fatalf("AgentPath took %s, a smolvm of another version", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := b.ResolveAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p, filepath.Join(cache, "smolvm", "agent")+"/") {
		t.Errorf("agent %s: want it in the user's cache %s", p, cache)
	}
	if _, err := ReadAgent(p); err != nil {
		t.Errorf("built agent: %v", err)
	}
	b.Agent = testAgent
	if got, _ := b.ResolveAgent(ctx); got != testAgent {
		t.Errorf("Builder.Agent set: ResolveAgent = %s, want %s", got, testAgent)
	}
}
