package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/disk"
	"github.com/smolvm/smolvm/internal/statedir"
)

// BuildOptions say what to build an image from and how.
type BuildOptions struct {
	// From names the source:
	//   "alpine", "alpine:3.20.3"  the Alpine minirootfs release
	//   "debian", "debian:bookworm" a minimal Debian (mmdebstrap)
	//   "oci:REF"                  an OCI/Docker image: registry reference,
	//                              OCI layout directory or `docker save` tarball
	//   "dir:PATH", "tar:PATH"     a root filesystem tree or tarball
	From string
	// SizeMiB is the root filesystem size. 0 = DefaultSizeMiB, or more when
	// the files need it; a given size too small for the files is an error
	// naming the minimum.
	SizeMiB int
	// Password, when set, lets root log in with it over SSH (and on the
	// console); logins with the VM's key always work.
	Password string
	// AuthorizedKeys are extra public keys (authorized_keys lines) root
	// accepts, written to AuthorizedKeysFile in the image.
	AuthorizedKeys []string
	// Packages are installed on top (Debian only).
	Packages []string
	// Mirror overrides where Alpine or Debian come from.
	Mirror string
	// SHA256 is the expected checksum of an Alpine release smolvm does
	// not pin.
	SHA256 string
	// Insecure lets an OCI registry be reached over plain HTTP or with an
	// unverified certificate.
	Insecure bool
	// Backend picks the kernel format: "qemu" (default, bzImage) or
	// "firecracker" (uncompressed vmlinux).
	Backend string
	// Force rebuilds even when the cached image matches.
	Force bool
}

// source is where a root filesystem comes from.
type source interface {
	// resolve checks the options and returns the image's Source string and
	// the inputs its fingerprint covers. It may ask a registry for a digest
	// but builds nothing.
	resolve(ctx context.Context) (desc string, inputs map[string]string, err error)
	// fill puts the root filesystem into dir, which exists and is empty.
	fill(ctx context.Context, dir string, img *Image) error
}

// parseSource turns BuildOptions.From into a source.
func (b *Builder) parseSource(opts *BuildOptions, rep *reporter) (source, error) {
	kind, arg, _ := strings.Cut(opts.From, ":")
	if len(opts.Packages) > 0 && kind != "debian" {
		return nil, fmt.Errorf("%w: packages can only be added to debian images (not %q)", ErrInvalid, kind)
	}
	switch kind {
	case "alpine":
		if arg == "" {
			arg = AlpineVersion
		}
		return &alpineSource{b: b, version: arg, opts: opts, rep: rep}, nil
	case "debian":
		if arg == "" {
			arg = DebianSuite
		}
		return &debianSource{b: b, suite: arg, opts: opts, rep: rep}, nil
	case "oci", "docker":
		arg = strings.TrimPrefix(arg, "//")
		if arg == "" {
			return nil, fmt.Errorf("%w: oci: needs an image reference, e.g. oci:docker.io/library/alpine:3.20", ErrInvalid)
		}
		if b.OCI == nil {
			return nil, errNoOCI
		}
		return &ociSource{b: b, ref: arg, opts: opts, rep: rep}, nil
	case "dir", "tar":
		if arg == "" {
			return nil, fmt.Errorf("%w: %s: needs a path, e.g. %s:/srv/rootfs", ErrInvalid, kind, kind)
		}
		if kind == "dir" {
			return &dirSource{path: arg, rep: rep}, nil
		}
		return &tarSource{path: arg, rep: rep}, nil
	}
	return nil, fmt.Errorf("%w: unknown image source %q: use alpine[:VERSION], debian[:SUITE], oci:REF, dir:PATH or tar:PATH", ErrInvalid, opts.From)
}

// Build builds (or returns from the cache) the image called name. The
// fingerprint covers the source and its resolved version, the size,
// password, keys, packages, the agent and the builder's own format; a
// build whose inputs match the cached image returns it at once.
func (b *Builder) Build(ctx context.Context, name string, opts BuildOptions) (*Image, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	img, err := b.build(ctx, name, opts)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

func (b *Builder) build(ctx context.Context, name string, opts BuildOptions) (*Image, error) {
	if opts.SizeMiB < 0 || opts.SizeMiB > MaxSizeMiB {
		return nil, fmt.Errorf("%w: size %d MiB: want 1 to %d", ErrInvalid, opts.SizeMiB, MaxSizeMiB)
	}
	if strings.ContainsAny(opts.Password, "\n\x00") {
		return nil, fmt.Errorf("%w: password must be one line", ErrInvalid)
	}
	for _, k := range opts.AuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return nil, fmt.Errorf("%w: authorized key %.40q: %w", ErrInvalid, k, err)
		}
	}
	rep := b.reporter()
	src, err := b.parseSource(&opts, rep)
	if err != nil {
		return nil, err
	}
	k, err := b.PrepareKernel(ctx, opts.Backend)
	if err != nil {
		return nil, err
	}
	a, err := b.readAgent(ctx)
	if err != nil {
		return nil, err
	}
	_, initrd, err := b.boot(ctx, a)
	if err != nil {
		return nil, err
	}
	agent := a.version()
	common := func(inputs map[string]string) string {
		inputs["size"] = fmt.Sprint(opts.SizeMiB)
		// Whether there is a password, not which: the manifest is no
		// place for anything a password can be guessed from. A changed
		// password is caught by passwordMatches.
		inputs["password"] = fmt.Sprint(opts.Password != "")
		inputs["keys"] = strings.Join(opts.AuthorizedKeys, "\n")
		inputs["agent"] = agent
		inputs["format"] = formatVersion
		return fingerprint(inputs)
	}
	desc, inputs, err := src.resolve(ctx)
	if err != nil {
		// Offline, a registry image built before still serves if nothing
		// else changed.
		if o, ok := src.(*ociSource); ok && !opts.Force {
			if img, ierr := b.Get(name); ierr == nil {
				if cached, ok := o.offlineInputs(img); ok && common(cached) == img.Fingerprint && b.passwordMatches(ctx, img, opts.Password) {
					rep.step("warning: %v; using the image built %s", err, img.Created.Format(time.DateTime))
					img.Kernel, img.KernelRelease, img.KernelFormat, img.Initrd = k.Path, k.Release, k.Format, initrd
					return img, nil
				}
			}
		}
		return nil, err
	}
	fp := common(inputs)

	match := func(img *Image) bool { return b.passwordMatches(ctx, img, opts.Password) }
	img, err := b.cached(ctx, name, fp, opts.Force, match, func(dir string) (*Image, error) {
		rep.step("building image %q from %s", name, desc)
		img := &Image{Source: desc, Password: opts.Password != "", Agent: agent}
		root := filepath.Join(dir, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			return nil, err
		}
		if err := src.fill(ctx, root, img); err != nil {
			return nil, err
		}
		if err := customize(root, opts, img, rep); err != nil {
			return nil, err
		}
		img.OS = osRelease(root)
		u, err := measureTree(root)
		if err != nil {
			return nil, err
		}
		size := opts.SizeMiB
		if size == 0 {
			// Room to work in: the default, or half again what the files need.
			size = max(DefaultSizeMiB, minSizeMiB(u)*3/2)
		}
		img.Rootfs = filepath.Join(dir, "rootfs.ext4")
		rep.step("making %d MiB ext4 filesystem (%d files, %.0f MiB)", size, u.inodes, float64(u.blocks*blockSize)/(1<<20))
		start := time.Now()
		if err := makeExt4(ctx, root, img.Rootfs, size, u); err != nil {
			return nil, err
		}
		b.logger().Debug("mke2fs", "image", name, "took", time.Since(start))
		if err := os.RemoveAll(root); err != nil {
			return nil, err
		}
		img.SizeMiB, img.UsedMiB = size, int(u.blocks*blockSize>>20)
		// mke2fs made it 0644 less the umask; it may hold password hashes,
		// and like all state it is its owner's alone.
		if err := os.Chmod(img.Rootfs, statedir.FileMode); err != nil {
			return nil, err
		}
		img.DiskBytes = diskBytes(img.Rootfs)
		img.BootArgs = SSHBootArgs
		img.Kernel, img.KernelRelease, img.KernelFormat, img.Initrd = k.Path, k.Release, k.Format, initrd
		return img, nil
	})
	if err != nil {
		return nil, err
	}
	// The kernel and initramfs live apart from the image; point at the
	// current ones (the same unless the host's kernel changed).
	img.Kernel, img.KernelRelease, img.KernelFormat, img.Initrd = k.Path, k.Release, k.Format, initrd
	return img, nil
}

// passwordMatches reports whether root of the built image img logs in
// with password, judged by the bcrypt hash inside its root filesystem
// (each build salts its hashes afresh, so nothing else can tell).
func (b *Builder) passwordMatches(ctx context.Context, img *Image, password string) bool {
	if password == "" || !img.Password {
		return password == "" && !img.Password
	}
	out, err := exec.CommandContext(ctx, disk.Tool("debugfs"), "-R", "cat "+RootPasswordFile, img.Rootfs).Output()
	if err != nil {
		b.logger().Debug("image password check", "image", img.Name, "err", err)
		return false
	}
	return bcrypt.CompareHashAndPassword(bytes.TrimSpace(out), []byte(password)) == nil
}

// diskBytes is the space the (sparse) file at path takes.
func diskBytes(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// osRelease returns PRETTY_NAME from the tree's os-release, if any.
func osRelease(root string) string {
	r, err := os.OpenRoot(root)
	if err != nil {
		return ""
	}
	defer r.Close()
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		data, err := r.ReadFile(p)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
				return strings.Trim(v, `"'`)
			}
		}
	}
	return ""
}

// errNoShell is wrapped when an image has no /bin/sh for commands to run in.
var errNoShell = errors.New("the image has no /bin/sh; commands run through it")
