package smolvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/agentbin"
)

// resolveAgent picks the guest agent, the static binary that becomes PID 1
// of a new VM: WithAgent; $SMOLVM_AGENT; smolvm-agent beside this program,
// or this program itself if it is smolvm (one distribution, one build);
// smolvm-agent or smolvm on PATH when its build info says it is the very
// smolvm version this program was built with; else one built from this
// program's own smolvm module source with the Go toolchain, once per
// version (agentbin.Provision). A binary of another version is never
// taken silently: guest and host speak a private protocol.
func resolveAgent(ctx context.Context, s settings) (string, error) {
	if p := findAgent(s); p != "" {
		return p, nil
	}
	return agentbin.Provision(ctx, agentbin.Options{CacheDir: agentCacheDir(s.home), Progress: s.progress, Logger: s.logger})
}

// findAgent is resolveAgent without the build: "" when one is needed.
func findAgent(s settings) string {
	if s.agent != "" {
		return s.agent
	}
	if a := os.Getenv(image.AgentEnv); a != "" {
		return a
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "smolvm-agent"); isFile(p) {
			return p
		}
		if filepath.Base(exe) == "smolvm" {
			return exe
		}
	}
	self := agentbin.SelfVersion()
	for _, name := range []string{"smolvm-agent", "smolvm"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		v := agentbin.ModuleVersion(p)
		if releaseVersion(v) && v == self {
			return p
		}
		s.logger.Debug("not using an agent of another smolvm version", "path", p, "version", v, "want", self)
	}
	return ""
}

// releaseVersion reports whether v names one exact source: not a
// checkout's "(devel)", not a build with uncommitted changes.
func releaseVersion(v string) bool {
	return v != "" && v != "(devel)" && !strings.HasSuffix(v, "+dirty")
}

// agentCacheDir is where built agents are kept: the user's cache
// directory (one build serves every state directory), else the state
// directory.
func agentCacheDir(home string) string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "smolvm", "agent")
	}
	return filepath.Join(home, "agent")
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
