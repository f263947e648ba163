package agentbin

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/statedir"
)

// ModulePath is the module the agent's source comes from.
const ModulePath = "github.com/smolvm/smolvm"

// ErrNoAgent is wrapped by every failure to provide an agent: the fix is
// always to name one (SMOLVM_AGENT or smolvm.WithAgent).
var ErrNoAgent = errors.New("no smolvm guest agent")

// howToFix is the advice every ErrNoAgent carries.
const howToFix = "set SMOLVM_AGENT to a static smolvm-agent binary (CGO_ENABLED=0 go build -o smolvm-agent " + ModulePath + "/cmd/smolvm-agent) or pass smolvm.WithAgent"

// Options configure Provision.
type Options struct {
	// CacheDir holds the agents built, one file per source. Required. It
	// and its parent are made (or must be) private to this user: what is
	// in it becomes PID 1 of every VM.
	CacheDir string
	// Go is the go command. Default: go on PATH, else $GOROOT/bin/go.
	Go string
	// Progress receives a line when a build starts and ends; nil = none.
	Progress io.Writer
	// Logger receives the same at info level; nil = discard.
	Logger *slog.Logger
}

// Source is the smolvm module source an agent is built from.
type Source struct {
	Dir     string // module root: go.mod and cmd/smolvm-agent
	Version string // the module's version, "(devel)" for a checkout
}

// Provision returns a static agent built from the source of the smolvm
// module this program was built with, so that host and guest halves
// match. It builds with the Go toolchain the first time a source is seen
// (CGO_ENABLED=0, -trimpath) and keeps the result in o.CacheDir, keyed by
// the module's version and its checksum (a release) or a hash of its Go
// sources (a checkout or replace directory); processes asking at
// once build it once (the others wait on a lock). Every failure wraps
// ErrNoAgent and says how to name an agent instead.
func Provision(ctx context.Context, o Options) (string, error) {
	path, err := provision(ctx, o, agentTarget)
	if err != nil {
		return "", fmt.Errorf("%w: %w; %s", ErrNoAgent, err, howToFix)
	}
	return path, nil
}

// ErrNoKeeper is wrapped by every failure of ProvisionKeeper.
var ErrNoKeeper = errors.New("no smolvm keeper")

// ProvisionKeeper returns the smolvm CLI built for this host from the
// same module source as Provision's agent, cached beside it the same way:
// the VM keeper (smolvm keeper) for programs that are not the CLI
// themselves.
func ProvisionKeeper(ctx context.Context, o Options) (string, error) {
	path, err := provision(ctx, o, keeperTarget)
	if err != nil {
		return "", fmt.Errorf("%w: %w; set SMOLVM_KEEPER to a smolvm CLI binary (go build -o smolvm %s/cmd/smolvm) or pass smolvm.WithKeeper", ErrNoKeeper, err, ModulePath)
	}
	return path, nil
}

// target is a binary Provision builds: its main package, the name prefix
// of its cached files, and whether it is for the guest (static, amd64).
type target struct {
	what, pkg, prefix string
	guest             bool
}

var (
	agentTarget  = target{what: "the smolvm guest agent", pkg: "cmd/smolvm-agent", prefix: "smolvm-agent-", guest: true}
	keeperTarget = target{what: "the smolvm keeper", pkg: "cmd/smolvm", prefix: "smolvm-keeper-"}
)

func provision(ctx context.Context, o Options, tg target) (string, error) {
	if o.CacheDir == "" {
		return "", errors.New("agentbin: no cache directory")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A release is named by its version and checksum, so finding a built
	// agent needs no source (which may take go mod download); anything
	// else by a hash of its source.
	var src Source
	key, ok := releaseKey()
	if !ok {
		var err error
		if src, err = findTrustedSource(ctx, o.Go, tg); err != nil {
			return "", err
		}
		if key, err = sourceKey(src); err != nil {
			return "", fmt.Errorf("hashing the agent's source in %s: %w", src.Dir, err)
		}
	}
	if err := privateDir(o.CacheDir); err != nil {
		return "", err
	}
	path := filepath.Join(o.CacheDir, tg.prefix+key)
	if ok, err := cached(path); ok || err != nil {
		if ok {
			// Its mtime says when it was last used, for prune.
			now := time.Now()
			os.Chtimes(path, now, now)
		}
		return path, err
	}
	unlock, err := flock.Lock(ctx, filepath.Join(o.CacheDir, ".lock"), statedir.FileMode)
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok, err := cached(path); ok || err != nil {
		return path, err // another process built it while we waited
	}
	goCmd, err := goCommand(o.Go)
	if err != nil {
		return "", err
	}
	if src.Dir == "" {
		if src, err = findTrustedSource(ctx, o.Go, tg); err != nil {
			return "", err
		}
	}
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "building %s from %s (once per smolvm version)\n", tg.what, src.Dir)
	}
	log.Info("building "+tg.what, "package", tg.pkg, "source", src.Dir, "version", src.Version, "go", goCmd)
	start := time.Now()
	if err := build(ctx, goCmd, src.Dir, path, tg); err != nil {
		return "", err
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "  done in %s: %s\n", took, path)
	}
	log.Info("built "+tg.what, "path", path, "took", took)
	prune(o.CacheDir, path, time.Now().Add(-unusedFor), log)
	return path, nil
}

// unusedFor is how long a built agent nobody asked for is kept. Each
// edit of a checkout's sources makes a new one; whatever is removed by
// mistake is only rebuilt.
const unusedFor = 7 * 24 * time.Hour

// prune removes the agents other than keep last used before cutoff, and
// build directories a killed build left. The caller holds the lock, so
// no build is under way.
func prune(dir, keep string, cutoff time.Time, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := e.Info()
		if err != nil || p == keep {
			continue
		}
		debris := strings.HasPrefix(e.Name(), ".build-") // no build runs: we hold the lock
		built := strings.HasPrefix(e.Name(), agentTarget.prefix) || strings.HasPrefix(e.Name(), keeperTarget.prefix)
		unused := built && fi.ModTime().Before(cutoff)
		if debris || unused {
			if err := os.RemoveAll(p); err == nil {
				log.Debug("removed from the agent cache", "path", p)
			}
		}
	}
}

func findTrustedSource(ctx context.Context, goCmd string, tg target) (Source, error) {
	src, err := FindSource(ctx, goCmd)
	if err != nil {
		return src, err
	}
	if err := trustedSource(src.Dir); err != nil {
		return src, err
	}
	if tg.pkg != agentTarget.pkg {
		return src, trustedPath(filepath.Join(src.Dir, tg.pkg))
	}
	return src, nil
}

// releaseKey names the agent of a released smolvm module: its version and
// a hash of its go.sum checksum (h1:, over every file of the module). A
// checkout, a directory replacement or a build without the checksum has
// none.
func releaseKey() (string, bool) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", false
	}
	for _, m := range bi.Deps {
		if m.Path != ModulePath {
			continue
		}
		if r := m.Replace; r != nil {
			if r.Version == "" {
				return "", false
			}
			m = r
		}
		if !isRelease(m.Version) || m.Sum == "" {
			return "", false
		}
		sum := sha256.Sum256([]byte(m.Sum))
		return label(m.Version) + "-" + hex.EncodeToString(sum[:8]), true
	}
	return "", false
}

// build compiles cmd/smolvm-agent in dir into path, through a temporary
// file in path's directory, so a killed build never leaves a file under
// the final name.
func build(ctx context.Context, goCmd, dir, path string, tg target) error {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, filepath.Base(tg.pkg))
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./"+tg.pkg)
	cmd.Dir = dir
	// The guest's init: static, for the guest's platform, from the
	// module's own go.mod (no workspace, no vendor directory, no VCS
	// stamping, which fails in copies of a repository). The keeper is
	// for this host, static all the same.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	if tg.guest {
		cmd.Env = append(cmd.Env, "GOOS=linux", "GOARCH=amd64")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./%s in %s: %w\n%s", tg.pkg, dir, err, strings.TrimSpace(string(b)))
	}
	if err := os.Chmod(out, 0o700); err != nil {
		return err
	}
	return os.Rename(out, path)
}

// cached reports whether path is a built agent this user can trust: a
// regular file of its own that nobody else can write.
func cached(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o022 != 0 || !ownedByMe(fi) {
		return false, fmt.Errorf("cached agent %s is not a private file of this user (%v); remove it", path, fi.Mode())
	}
	return true, nil
}

// privateDir makes dir (and missing parents) and checks that only this
// user can change what is in it: dir 0700 and its own, and its parent not
// open to others' writes either (they could swap dir itself).
func privateDir(dir string) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, statedir.DirMode); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	fi, err := os.Stat(parent)
	if err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	if m := fi.Mode(); m&0o022 != 0 && m&fs.ModeSticky == 0 {
		return fmt.Errorf("agent cache: %s is writable by other users (%v), who could replace the agent", parent, m.Perm())
	}
	if err := os.MkdirAll(dir, statedir.DirMode); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	fi, err = os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("agent cache %s is not a directory (%v); remove it", dir, fi.Mode())
	}
	if !ownedByMe(fi) {
		return fmt.Errorf("agent cache %s belongs to uid %d, not to this user (uid %d), who could replace the agent: remove it, or set XDG_CACHE_HOME", dir, fi.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// Files others may have planted meanwhile are theirs, and cached
		// refuses them.
		if err := os.Chmod(dir, statedir.DirMode); err != nil {
			return fmt.Errorf("agent cache %s is open to other users and cannot be made private: %w", dir, err)
		}
	}
	return nil
}

// trustedSource refuses to build from a source another user could have
// written: the module root, its go.mod and the agent's directory must
// belong to this user (or root) and be closed to others' writes. (A
// program compiled in a directory since removed, say in /tmp, must not
// build whatever someone put there since.)
func trustedSource(dir string) error {
	for _, p := range []string{dir, filepath.Join(dir, "go.mod"), filepath.Join(dir, "cmd", "smolvm-agent")} {
		if err := trustedPath(p); err != nil {
			return fmt.Errorf("not building the agent from %s: %w", dir, err)
		}
	}
	return nil
}

// trustedPath checks that p belongs to this user or root and that others
// cannot write it.
func trustedPath(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (int(st.Uid) != os.Geteuid() && st.Uid != 0) || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s belongs to another user or others can write it (%v)", p, fi.Mode())
	}
	return nil
}

func ownedByMe(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}

// goCommand finds the go command: given, on PATH, or in $GOROOT/bin.
func goCommand(given string) (string, error) {
	if given != "" {
		return exec.LookPath(given)
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		if p, err := exec.LookPath(filepath.Join(root, "bin", "go")); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no Go toolchain to build one with (go is not on PATH)")
}

// FindSource locates the source of the smolvm module this program was
// built with: the directory it was compiled from when that still exists
// (a checkout, a replace directive's directory, the module cache), else
// the module cache's copy of its version (go mod download, which may
// fetch it through GOPROXY).
func FindSource(ctx context.Context, goCmd string) (Source, error) {
	version, replaceDir := selfModule()
	src := Source{Version: version, Dir: localSource(replaceDir)}
	if src.Dir != "" {
		return src, nil
	}
	if !isRelease(version) || replaceDir != "" {
		return src, errNoSource
	}
	g, err := goCommand(goCmd)
	if err != nil {
		return src, err
	}
	cmd := exec.CommandContext(ctx, g, "mod", "download", "-json", ModulePath+"@"+version)
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	cmd.Dir = os.TempDir() // outside any module
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &info); jerr == nil && info.Error != "" {
		err = errors.New(info.Error)
	}
	if err != nil {
		return src, fmt.Errorf("go mod download %s@%s: %w", ModulePath, version, err)
	}
	if !isModuleRoot(info.Dir) {
		return src, fmt.Errorf("go mod download %s@%s: %q holds no cmd/smolvm-agent", ModulePath, version, info.Dir)
	}
	src.Dir = info.Dir
	return src, nil
}

var errNoSource = errors.New("cannot find the source of the smolvm module this program was built from (built with -trimpath from a checkout or a relative replace directory that is not here)")

// localSource returns the smolvm module's source directory on this
// machine, if known without the go command: the directory this package
// was compiled from (recorded unless -trimpath), else an absolute replace
// directory.
func localSource(replaceDir string) string {
	// <module root>/internal/agentbin/provision.go
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if root := filepath.Dir(filepath.Dir(filepath.Dir(file))); isModuleRoot(root) {
			return root
		}
	}
	if replaceDir != "" && filepath.IsAbs(replaceDir) && isModuleRoot(replaceDir) {
		return replaceDir
	}
	return ""
}

// Describe says what Provision would do, without building or downloading
// anything: use the agent it built before, or build one from where; an
// error when it could not.
func Describe(cacheDir, goCmd string) (string, error) {
	version, replaceDir := selfModule()
	dir := localSource(replaceDir)
	key, ok := releaseKey()
	if !ok && dir != "" {
		var err error
		if key, err = sourceKey(Source{Dir: dir, Version: version}); err == nil {
			ok = true
		}
	}
	if p := filepath.Join(cacheDir, "smolvm-agent-"+key); ok {
		if found, _ := cached(p); found {
			return p + ", built before from this smolvm version's source", nil
		}
	}
	g, err := goCommand(goCmd)
	if err != nil {
		return "", err
	}
	switch {
	case dir != "":
		if err := trustedSource(dir); err != nil {
			return "", err
		}
		return "none yet; the first VM builds one from " + dir + " with " + g, nil
	case isRelease(version) && replaceDir == "":
		return "none yet; the first VM builds one from " + ModulePath + "@" + version + " (go mod download) with " + g, nil
	}
	return "", errNoSource
}

// selfModule returns the version of the smolvm module in this program's
// build info ("(devel)" when it is the main module or a directory
// replacement) and, for a directory replacement, its directory as the
// main module's go.mod wrote it.
func selfModule() (version, replaceDir string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", ""
	}
	if bi.Main.Path == ModulePath {
		return bi.Main.Version, ""
	}
	for _, m := range bi.Deps {
		if m.Path != ModulePath {
			continue
		}
		if r := m.Replace; r != nil {
			if r.Version == "" {
				return "(devel)", r.Path
			}
			return r.Version, ""
		}
		return m.Version, ""
	}
	return "", ""
}

// ModuleVersion returns the smolvm module version in the build info of
// the binary at path ("" if it has none, or is not smolvm's), so a
// smolvm found on PATH can be compared with this program's.
func ModuleVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil || bi.Main.Path != ModulePath {
		return ""
	}
	return bi.Main.Version
}

// SelfVersion returns the version of the smolvm module this program was
// built with, "(devel)" for a checkout.
func SelfVersion() string {
	v, _ := selfModule()
	return v
}

// isModuleRoot reports whether dir holds the smolvm module's go.mod and
// the agent's main package.
func isModuleRoot(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "cmd", "smolvm-agent", "main.go")); err != nil {
		return false
	}
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`) == ModulePath
		}
	}
	return false
}

// sourceKey names an agent build: the module version (readable) and a
// hash of every non-test Go file, go.mod and go.sum of the module, which
// is what the build reads. A whole-module hash rebuilds the agent for
// host-only edits too, but never misses a change; the rebuilt binary is
// byte-identical then, so images and templates keyed by the agent's hash
// stay valid.
func sourceKey(src Source) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(src.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p == src.Dir {
				return nil
			}
			if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // another module, not built with this one
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		isGo := strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")
		rel, _ := filepath.Rel(src.Dir, p)
		if !isGo && rel != "go.mod" && rel != "go.sum" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", rel, len(data))
		h.Write(data)
		return nil
	})
	if err != nil {
		return "", err
	}
	return label(src.Version) + "-" + hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// label is a version as a file name part: "v1.2.3", "devel".
func label(version string) string {
	v := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return -1
	}, version)
	if v == "" {
		v = "devel"
	}
	return v
}
