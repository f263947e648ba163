package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Debian defaults.
const (
	DebianSuite         = "bookworm"
	DefaultDebianMirror = "http://deb.debian.org/debian"
)

var (
	debianSuiteRE   = regexp.MustCompile(`^[a-z][a-z0-9-]{1,31}$`)
	debianPackageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$`)
)

// debianSource builds a minimal Debian (mmdebstrap --variant=minbase) from
// the Debian archive, plus the requested packages. It boots as is: the
// agent is PID 1, the root filesystem needs only /bin/sh.
type debianSource struct {
	b      *Builder
	suite  string
	mirror string
	opts   *BuildOptions
	rep    *reporter
}

func (s *debianSource) resolve(ctx context.Context) (string, map[string]string, error) {
	if !debianSuiteRE.MatchString(s.suite) {
		return "", nil, fmt.Errorf("%w: debian suite %q: want a release name such as %s", ErrInvalid, s.suite, DebianSuite)
	}
	for _, p := range s.opts.Packages {
		if !debianPackageRE.MatchString(p) {
			return "", nil, fmt.Errorf("%w: debian package name %q", ErrInvalid, p)
		}
	}
	s.mirror = s.opts.Mirror
	if s.mirror == "" {
		s.mirror = s.b.DebianMirror
	}
	if s.mirror == "" {
		s.mirror = DefaultDebianMirror
	}
	if !strings.HasPrefix(s.mirror, "http://") && !strings.HasPrefix(s.mirror, "https://") && !strings.HasPrefix(s.mirror, "file:/") {
		return "", nil, fmt.Errorf("%w: debian mirror %q: want an http(s):// or file:/ URL", ErrInvalid, s.mirror)
	}
	pkgs := slices.Clone(s.opts.Packages)
	slices.Sort(pkgs)
	return "debian:" + s.suite, map[string]string{
		"source": "debian", "suite": s.suite, "mirror": s.mirror, "variant": "minbase",
		"packages": strings.Join(slices.Compact(pkgs), ","),
	}, nil
}

func (s *debianSource) fill(ctx context.Context, dir string, img *Image) error {
	bin, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return fmt.Errorf("debian: mmdebstrap is not installed (apt-get install mmdebstrap): %w", err)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("debian: building a Debian image needs root (mmdebstrap, file ownership in the image)")
	}
	// mmdebstrap wants to create the directory itself.
	if err := os.Remove(dir); err != nil {
		return err
	}
	stall := int(s.b.stallTimeout() / time.Second)
	args := []string{
		"--variant=minbase", "--mode=root", "--format=directory",
		// Bound every download, so an unreachable mirror fails in seconds.
		fmt.Sprintf(`--aptopt=Acquire::http::Timeout "%d"`, stall),
		fmt.Sprintf(`--aptopt=Acquire::https::Timeout "%d"`, stall),
		`--aptopt=Acquire::Retries "1"`,
	}
	if len(s.opts.Packages) > 0 {
		args = append(args, "--include="+strings.Join(s.opts.Packages, ","))
	}
	args = append(args, s.suite, dir, s.mirror)
	s.rep.step("running mmdebstrap %s (Debian %s from %s; takes a while)", strings.Join(args[len(args)-3:], " "), s.suite, s.mirror)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	cmd.WaitDelay = 5 * time.Second
	lw := &lineWriter{rep: s.rep}
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debian %s from %s: mmdebstrap: %w:\n%s", s.suite, s.mirror, err, strings.Join(lw.last, "\n"))
	}
	img.Packages = s.opts.Packages
	return nil
}

// lineWriter passes mmdebstrap's "I:" progress lines on and keeps the
// last lines of its output for an error message.
type lineWriter struct {
	rep     *reporter
	partial []byte
	last    []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		if msg, ok := strings.CutPrefix(line, "I: "); ok {
			w.rep.step("  mmdebstrap: %s", msg)
		}
		if w.last = append(w.last, line); len(w.last) > 15 {
			w.last = w.last[1:]
		}
	}
}
