package agentbin

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Env names the environment variable that picks the agent binary.
const Env = "SMOLVM_AGENT"

// Find returns the agent to use when none was given, without building
// one: $SMOLVM_AGENT; smolvm-agent beside this program, or this program
// itself if it is smolvm (one distribution, one build); smolvm-agent or
// smolvm on PATH when its build info says it is the very smolvm release
// this program was built with. "" means none: Provision builds one. A
// binary of another version is never taken silently: guest and host speak
// a private protocol.
func Find(log *slog.Logger) string {
	if a := os.Getenv(Env); a != "" {
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
	self := SelfVersion()
	for _, name := range []string{"smolvm-agent", "smolvm"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		v := ModuleVersion(p)
		if isRelease(v) && v == self {
			return p
		}
		if log != nil {
			log.Debug("not using an agent of another smolvm version", "path", p, "version", v, "want", self)
		}
	}
	return ""
}

// DefaultCacheDir is where built agents are kept: the user's cache
// directory (~/.cache/smolvm/agent: one build serves every state
// directory), else home/agent.
func DefaultCacheDir(home string) string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "smolvm", "agent")
	}
	return filepath.Join(home, "agent")
}

// isRelease reports whether v names one exact source: not a checkout's
// "(devel)", not a build with uncommitted changes.
func isRelease(v string) bool {
	return v != "" && v != "(devel)" && !strings.HasSuffix(v, "+dirty")
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
