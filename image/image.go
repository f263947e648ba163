// Package image builds and caches the bootable images smolvm VMs start
// from: a kernel, the agent initramfs, and an ext4 root filesystem.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

	"golang.org/x/sys/unix"
)

// SSHBootArgs is the kernel command line that boots an image into the
// smolvm agent, which serves SSH. smolvm adds the per-VM keys (address,
// hostname) itself.
const SSHBootArgs = "console=ttyS0 quiet panic=-1 pci=off ipv6.disable=1 rcupdate.rcu_expedited=1 cryptomgr.notests i8042.noaux i8042.nokbd"

// DefaultName is the name of the default image.
const DefaultName = "alpine"

// DefaultSizeMiB is the root filesystem size images are built at; a VM's
// disk is grown (or shrunk) from it to the size the VM asks for.
const DefaultSizeMiB = 512

// ErrNotFound is returned for an image name that has not been built.
var ErrNotFound = errors.New("image not found")

// Image is a bootable image: the files a VM boots from.
type Image struct {
	Name        string    `json:"name"`
	Kernel      string    `json:"kernel"`
	Initrd      string    `json:"initrd"`
	Rootfs      string    `json:"rootfs"`
	BootArgs    string    `json:"boot_args"`
	SizeMiB     int       `json:"size_mib"`
	Source      string    `json:"source"`
	Fingerprint string    `json:"fingerprint"`
	Created     time.Time `json:"created"`
}

// Builder builds images into a cache directory. The zero value is not
// usable: CacheDir and Agent are required.
type Builder struct {
	// CacheDir holds images/, initramfs/ and downloads/.
	CacheDir string
	// Agent is the static smolvm binary that becomes the guest's init.
	Agent string
	// Kernel is the kernel to boot; empty = the newest /boot/vmlinuz-*.
	Kernel string
	// AlpineSource is where the Alpine minirootfs comes from: empty for
	// Alpine's CDN, a local file, a directory holding the release file, an
	// http(s) URL of the file, or a mirror's base URL.
	AlpineSource string
	// Progress receives human-readable progress lines; nil = none.
	Progress io.Writer
	Logger   *slog.Logger
}

func (b *Builder) logger() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

func (b *Builder) progress(format string, args ...any) {
	if b.Progress != nil {
		fmt.Fprintf(b.Progress, format+"\n", args...)
	}
}

// Default returns the default image (Alpine with the smolvm agent),
// building it on first use.
func (b *Builder) Default(ctx context.Context) (*Image, error) {
	return b.BuildAlpine(ctx, DefaultName, DefaultSizeMiB)
}

// Get returns a built image by name.
func (b *Builder) Get(name string) (*Image, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(b.CacheDir, "images", name, "image.json"))
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

// ValidateName rejects names that could escape the cache directory.
func ValidateName(name string) error {
	if name == "" || len(name) > 64 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("invalid image name %q: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", name)
	}
	return nil
}

// fingerprint hashes every input of a build, so a changed input rebuilds.
func fingerprint(inputs map[string]string) string {
	keys := make([]string, 0, len(inputs))
	for k := range inputs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, inputs[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// cached builds an image under name unless one with the same fingerprint
// exists. build fills dir (a fresh staging directory); the result replaces
// the old image with a rename, so readers never see a torn image, and a
// lock file keeps two processes from building the same name at once.
func (b *Builder) cached(ctx context.Context, name, fp string, build func(dir string) (*Image, error)) (*Image, error) {
	if img, err := b.Get(name); err == nil && img.Fingerprint == fp {
		return img, nil
	}
	root := filepath.Join(b.CacheDir, "images")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockFile(ctx, filepath.Join(root, "."+name+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if img, err := b.Get(name); err == nil && img.Fingerprint == fp {
		return img, nil // another process built it while we waited
	}
	staging, err := os.MkdirTemp(root, ".build-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	img, err := build(staging)
	if err != nil {
		return nil, err
	}
	final := filepath.Join(root, name)
	img.Name, img.Fingerprint, img.Created = name, fp, time.Now().UTC()
	img.Rootfs = filepath.Join(final, filepath.Base(img.Rootfs))
	manifest, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(staging, "image.json"), manifest, 0o644); err != nil {
		return nil, err
	}
	old := staging + ".old"
	if err := os.Rename(final, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := os.Rename(staging, final); err != nil {
		os.Rename(old, final)
		return nil, err
	}
	os.RemoveAll(old)
	return img, nil
}

// lockFile takes an exclusive flock on path, waiting until ctx is done.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
