package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// The Alpine release the default image is built from, pinned by checksum.
const (
	AlpineVersion = "3.20.3"
	AlpineFile    = "alpine-minirootfs-3.20.3-x86_64.tar.gz"
	AlpineSHA256  = "d4e6fd67dcf75e40c451560ac7265166c2b72a0f38ddc9aae756a7de3d1efa0c"
	AlpineMirror  = "https://dl-cdn.alpinelinux.org/alpine"
)

// AlpineSourceEnv names the environment variable that points smolvm at a
// local copy or mirror of the Alpine release, for offline machines.
const AlpineSourceEnv = "SMOLVM_ALPINE_SOURCE"

// alpineSums pins the minirootfs releases smolvm knows; other versions
// need BuildOptions.SHA256 or a .sha256 file next to the release.
var alpineSums = map[string]string{
	AlpineVersion: AlpineSHA256,
}

var alpineVersionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// BuildAlpine builds an Alpine image with the smolvm agent, sizeMiB big,
// that takes key logins only.
func (b *Builder) BuildAlpine(ctx context.Context, name string, sizeMiB int) (*Image, error) {
	return b.BuildAlpineSSH(ctx, name, "", sizeMiB)
}

// BuildAlpineSSH builds an SSH-ready Alpine image: root logs in with the
// VM's key always, and with password when it is not empty. sizeMiB 0 picks
// the default size. It is the reference's ImageBuilder.build_alpine_ssh;
// boot the result with its BootArgs (SSHBootArgs).
func (b *Builder) BuildAlpineSSH(ctx context.Context, name, password string, sizeMiB int) (*Image, error) {
	return b.Build(ctx, name, BuildOptions{From: "alpine", Password: password, SizeMiB: sizeMiB})
}

type alpineSource struct {
	b       *Builder
	version string
	opts    *BuildOptions
	rep     *reporter
}

func (s *alpineSource) file() string { return "alpine-minirootfs-" + s.version + "-x86_64.tar.gz" }

func (s *alpineSource) relPath() string {
	mm := strings.Join(strings.Split(s.version, ".")[:2], ".")
	return "/v" + mm + "/releases/x86_64/" + s.file()
}

func (s *alpineSource) resolve(ctx context.Context) (string, map[string]string, error) {
	if !alpineVersionRE.MatchString(s.version) {
		return "", nil, fmt.Errorf("%w: alpine version %q: want X.Y.Z, e.g. %s", ErrInvalid, s.version, AlpineVersion)
	}
	sum := s.opts.SHA256
	if sum == "" {
		sum = alpineSums[s.version]
	}
	inputs := map[string]string{"source": "alpine", "version": s.version, "sha256": sum}
	if sum == "" {
		// Where a pinned file comes from does not change what it holds;
		// unpinned, the location is part of the input.
		local, remote := s.location()
		inputs["location"] = local + remote
	}
	return "alpine:" + s.version, inputs, nil
}

// location resolves the mirror setting to a local file path or a URL of
// the release file.
func (s *alpineSource) location() (local, remote string) {
	src := s.opts.Mirror
	if src == "" {
		src = s.b.AlpineSource
	}
	if src == "" {
		src = os.Getenv(AlpineSourceEnv)
	}
	switch {
	case src == "":
		return "", AlpineMirror + s.relPath()
	case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
		if strings.HasSuffix(src, ".tar.gz") {
			return "", src
		}
		return "", strings.TrimSuffix(src, "/") + s.relPath()
	case strings.HasPrefix(src, "file://"):
		src = strings.TrimPrefix(src, "file://")
	}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		return filepath.Join(src, s.file()), ""
	}
	return src, ""
}

// checksum returns the sha256 the release file must have: given, pinned,
// or published next to it (a .sha256 file, as Alpine's mirrors have).
func (s *alpineSource) checksum(ctx context.Context, local, remote string) (string, error) {
	if s.opts.SHA256 != "" {
		return strings.ToLower(s.opts.SHA256), nil
	}
	if sum := alpineSums[s.version]; sum != "" {
		return sum, nil
	}
	var text string
	var err error
	if local != "" {
		var b []byte
		b, err = os.ReadFile(local + ".sha256")
		text = string(b)
	} else {
		text, err = s.b.fetchText(ctx, remote+".sha256")
	}
	if f := strings.Fields(text); err == nil && len(f) > 0 && len(f[0]) == 64 {
		return strings.ToLower(f[0]), nil
	}
	return "", fmt.Errorf("%w: no checksum known for alpine %s (pinned: %s): pass the release file's sha256 (--sha256)", ErrInvalid, s.version, AlpineVersion)
}

func (s *alpineSource) fill(ctx context.Context, dir string, img *Image) error {
	tarball, err := s.fetch(ctx)
	if err != nil {
		return err
	}
	return unpackFile(tarball, dir, s.rep)
}

// fetch returns a verified local copy of the release file.
func (s *alpineSource) fetch(ctx context.Context) (string, error) {
	local, remote := s.location()
	hint := fmt.Sprintf("set %s (or the builder's AlpineSource, or --mirror) to a local copy of %s, a directory holding it, or a mirror URL", AlpineSourceEnv, s.file())
	sum, err := s.checksum(ctx, local, remote)
	if err != nil {
		return "", err
	}
	if local != "" {
		if err := verifyFile(local, sum); err != nil {
			return "", fmt.Errorf("alpine minirootfs: %w; %s", err, hint)
		}
		return local, nil
	}
	dst := filepath.Join(s.b.cacheDir(), "downloads", s.file())
	if verifyFile(dst, sum) == nil {
		return dst, nil
	}
	if err := s.b.download(ctx, remote, dst, sum, s.rep); err != nil {
		return "", fmt.Errorf("alpine minirootfs: %w; offline? %s", err, hint)
	}
	return dst, nil
}
