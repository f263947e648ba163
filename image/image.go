// Package image builds and caches the bootable images smolvm VMs start
// from: a kernel, the agent initramfs, and an ext4 root filesystem made
// from Alpine, Debian, any OCI image (with package image/oci, see
// Builder.OCI), or a directory or tarball, without Docker.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// SSHBootArgs is the kernel command line that boots an image into the
// smolvm agent, which serves SSH. smolvm adds the per-VM keys (address,
// hostname) itself.
const SSHBootArgs = "console=ttyS0 quiet panic=-1 pci=off ipv6.disable=1 rcupdate.rcu_expedited=1 cryptomgr.notests i8042.noaux i8042.nokbd"

// DefaultName is the name of the default image.
const DefaultName = "alpine"

// DefaultSizeMiB is the root filesystem size images are built at unless
// asked otherwise (or larger, when the files need more); a VM's disk is
// grown (or shrunk) from it to the size the VM asks for.
const DefaultSizeMiB = 512

// MaxSizeMiB bounds the root filesystem size (1 TiB).
const MaxSizeMiB = 1 << 20

// Errors, matched with errors.Is.
var (
	// ErrNotFound: no image of that name has been built.
	ErrNotFound = errors.New("image not found")
	// ErrInvalid: a bad name, source, size or option.
	ErrInvalid = errors.New("invalid argument")
	// ErrChecksum: a download or file does not match its checksum.
	ErrChecksum = errors.New("checksum mismatch")
)

// Image is a bootable image: the files a VM boots from and what it was
// built from. Its manifest is images/NAME/image.json in the cache.
type Image struct {
	Name          string `json:"name"`
	Kernel        string `json:"kernel"`
	KernelRelease string `json:"kernel_release,omitempty"`
	// KernelFormat is "bzImage" (QEMU) or "vmlinux" (Firecracker).
	KernelFormat string `json:"kernel_format,omitempty"`
	Initrd       string `json:"initrd"`
	Rootfs       string `json:"rootfs"`
	BootArgs     string `json:"boot_args"`
	// SizeMiB is the size of the root filesystem (and of the file holding
	// it); DiskBytes is what the sparse file takes on the host's disk.
	SizeMiB   int   `json:"size_mib"`
	DiskBytes int64 `json:"disk_bytes,omitempty"`
	// UsedMiB is how much of SizeMiB the files take.
	UsedMiB int `json:"used_mib,omitempty"`
	// Source says what the image was built from, with the resolved
	// version: "alpine:3.20.3", "debian:bookworm", "oci:REF@sha256:...",
	// "dir:PATH", "tar:PATH".
	Source   string   `json:"source"`
	OS       string   `json:"os,omitempty"` // PRETTY_NAME from /etc/os-release
	Packages []string `json:"packages,omitempty"`
	Password bool     `json:"password"` // root has a password (else keys only)
	// Env, Entrypoint, Cmd and WorkingDir come from an OCI image's config;
	// Env is also the VM's initial environment.
	Env         []string  `json:"env,omitempty"`
	Entrypoint  []string  `json:"entrypoint,omitempty"`
	Cmd         []string  `json:"cmd,omitempty"`
	WorkingDir  string    `json:"working_dir,omitempty"`
	Agent       string    `json:"agent,omitempty"` // sha256 prefix of the agent built with
	Fingerprint string    `json:"fingerprint"`
	Created     time.Time `json:"created"`
	BuildTime   Duration  `json:"build_time"`
}

// Duration is a time.Duration that reads as "1.234s" in JSON.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).Round(time.Millisecond).String() }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Builder builds images into a cache directory. The zero value works:
// every field has a default.
type Builder struct {
	// CacheDir holds images/, initramfs/, kernels/ and downloads/.
	// Default: DefaultCacheDir().
	CacheDir string
	// Agent is the static smolvm binary that becomes the guest's init.
	// Default: see ResolveAgent.
	Agent string
	// Kernel is the kernel to boot; empty = $SMOLVM_KERNEL, else the
	// newest /boot/vmlinuz-*.
	Kernel string
	// AlpineSource is where the Alpine minirootfs comes from: empty for
	// $SMOLVM_ALPINE_SOURCE, else Alpine's CDN; a local file, a directory
	// holding the release file, an http(s) URL of the file, or a mirror's
	// base URL.
	AlpineSource string
	// DebianMirror is the Debian archive to build from. Default
	// DefaultDebianMirror.
	DebianMirror string
	// StallTimeout fails a download (or a registry pull) that receives
	// nothing for this long. Default 30s.
	StallTimeout time.Duration
	// Progress receives progress: bars on a terminal, plain lines
	// otherwise; nil = none.
	Progress io.Writer
	// Logger receives debug detail; nil = discard.
	Logger *slog.Logger
	// OCI pulls the images "oci:" sources name; nil refuses them (with
	// errors.ErrUnsupported). Set it to oci.Puller{} from package
	// image/oci, which links a registry client.
	OCI OCIPuller
}

// DefaultCacheDir is where images are cached when Builder.CacheDir is
// empty: $SMOLVM_HOME, else $XDG_STATE_HOME/smolvm, else
// ~/.local/state/smolvm (the same directory smolvm keeps its state in).
func DefaultCacheDir() string {
	if h := os.Getenv("SMOLVM_HOME"); h != "" {
		return h
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "smolvm")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "smolvm")
	}
	return filepath.Join(os.TempDir(), "smolvm")
}

func (b *Builder) cacheDir() string {
	if b.CacheDir == "" {
		return DefaultCacheDir()
	}
	return b.CacheDir
}

func (b *Builder) imagesDir() string { return filepath.Join(b.cacheDir(), "images") }

func (b *Builder) logger() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

func (b *Builder) stallTimeout() time.Duration {
	if b.StallTimeout <= 0 {
		return 30 * time.Second
	}
	return b.StallTimeout
}

// Default returns the default image (Alpine with the smolvm agent, keys
// only), building it on first use.
func (b *Builder) Default(ctx context.Context) (*Image, error) {
	return b.BuildAlpine(ctx, DefaultName, DefaultSizeMiB)
}

// Get returns a built image by name, as its manifest recorded it.
func (b *Builder) Get(name string) (*Image, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(b.imagesDir(), name, "image.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	var img Image
	if err := json.Unmarshal(data, &img); err != nil {
		return nil, fmt.Errorf("image %q: manifest: %w", name, err)
	}
	return &img, nil
}

// List returns the built images, sorted by name.
func (b *Builder) List() ([]*Image, error) {
	ents, err := os.ReadDir(b.imagesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue // staging and lock files start with '.'
		}
		img, err := b.Get(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes a built image. VMs created from it keep working: each has
// its own copy of the disk.
func (b *Builder) Remove(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	unlock, err := b.lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(b.imagesDir(), name)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	// Rename first, so the name is gone at once even if removal is slow.
	trash, err := os.MkdirTemp(b.imagesDir(), ".rm-"+name+"-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(trash, name)); err != nil {
		os.Remove(trash)
		return fmt.Errorf("image %q: remove: %w", name, err)
	}
	return os.RemoveAll(trash)
}

// ValidateName rejects names that could escape the cache directory or
// confuse a shell: 1-64 letters, digits, '.', '_' or '-', not starting
// with '.' or '-'.
func ValidateName(name string) error {
	if name == "" || len(name) > 64 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w: image name %q: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", ErrInvalid, name)
	}
	return nil
}
