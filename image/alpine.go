package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The Alpine release the default image is built from, pinned by checksum.
const (
	AlpineVersion = "3.20.3"
	AlpineFile    = "alpine-minirootfs-3.20.3-x86_64.tar.gz"
	AlpineSHA256  = "d4e6fd67dcf75e40c451560ac7265166c2b72a0f38ddc9aae756a7de3d1efa0c"
	AlpineMirror  = "https://dl-cdn.alpinelinux.org/alpine"
	alpineRelPath = "/v3.20/releases/x86_64/" + AlpineFile
)

// AlpineSourceEnv names the environment variable that points smolvm at a
// local copy or mirror of the Alpine release, for offline machines.
const AlpineSourceEnv = "SMOLVM_ALPINE_SOURCE"

// ErrChecksum is returned when a download does not match its pinned hash.
var ErrChecksum = errors.New("checksum mismatch")

// BuildAlpine builds an Alpine image with the smolvm agent, sizeMiB big.
func (b *Builder) BuildAlpine(ctx context.Context, name string, sizeMiB int) (*Image, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	kernel, initrd, err := b.Boot(ctx)
	if err != nil {
		return nil, err
	}
	fp := fingerprint(map[string]string{
		"source": "alpine", "sha256": AlpineSHA256, "size": strconv.Itoa(sizeMiB), "format": "1",
	})
	img, err := b.cached(ctx, name, fp, func(dir string) (*Image, error) {
		tarball, err := b.fetchAlpine(ctx)
		if err != nil {
			return nil, err
		}
		root := filepath.Join(dir, "root")
		b.progress("unpacking %s", filepath.Base(tarball))
		if err := unpackTarGz(tarball, root); err != nil {
			return nil, fmt.Errorf("image %q: %w", name, err)
		}
		for _, d := range []string{"etc/smolvm", "root/.ssh"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
				return nil, err
			}
		}
		rootfs := filepath.Join(dir, "rootfs.ext4")
		b.progress("making %d MiB ext4 filesystem", sizeMiB)
		if err := makeExt4(ctx, root, rootfs, sizeMiB); err != nil {
			return nil, fmt.Errorf("image %q: %w", name, err)
		}
		os.RemoveAll(root)
		return &Image{Rootfs: rootfs, SizeMiB: sizeMiB, Source: "alpine:" + AlpineVersion}, nil
	})
	if err != nil {
		return nil, err
	}
	// Kernel and initramfs are cached apart from the root filesystem, so
	// a new agent build does not rebuild the image.
	img.Kernel, img.Initrd, img.BootArgs = kernel, initrd, SSHBootArgs
	return img, nil
}

// alpineURL resolves AlpineSource (or the environment) to a local file path
// or a URL of the release file.
func (b *Builder) alpineURL() (local, remote string) {
	src := b.AlpineSource
	if src == "" {
		src = os.Getenv(AlpineSourceEnv)
	}
	switch {
	case src == "":
		return "", AlpineMirror + alpineRelPath
	case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
		if strings.HasSuffix(src, ".tar.gz") {
			return "", src
		}
		return "", strings.TrimSuffix(src, "/") + alpineRelPath
	case strings.HasPrefix(src, "file://"):
		src = strings.TrimPrefix(src, "file://")
	}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		return filepath.Join(src, AlpineFile), ""
	}
	return src, ""
}

// fetchAlpine returns a verified local copy of the Alpine release file.
func (b *Builder) fetchAlpine(ctx context.Context) (string, error) {
	local, remote := b.alpineURL()
	hint := fmt.Sprintf("set %s (or the builder's AlpineSource) to a local copy of %s, a directory holding it, or a mirror URL", AlpineSourceEnv, AlpineFile)
	if local != "" {
		if err := verifyFile(local, AlpineSHA256); err != nil {
			return "", fmt.Errorf("alpine minirootfs %s: %w; %s", local, err, hint)
		}
		return local, nil
	}
	dl := filepath.Join(b.CacheDir, "downloads")
	dst := filepath.Join(dl, AlpineFile)
	if verifyFile(dst, AlpineSHA256) == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	b.progress("downloading %s", remote)
	if err := download(ctx, remote, dst, AlpineSHA256, b.Progress); err != nil {
		return "", fmt.Errorf("alpine minirootfs: %w; offline? %s", err, hint)
	}
	return dst, nil
}

func verifyFile(path, sha string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("%w: sha256 %s, want %s", ErrChecksum, got, sha)
	}
	return nil
}

// download fetches rawURL to dst, verifying sha256 before the file appears
// under its final name.
func download(ctx context.Context, rawURL, dst, sha string, progress io.Writer) error {
	if _, err := url.Parse(rawURL); err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
	}}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: %s", rawURL, resp.Status)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".download-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), resp.Body); err != nil {
		tmp.Close()
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("download %s: %w: sha256 %s, want %s", rawURL, ErrChecksum, got, sha)
	}
	return os.Rename(tmp.Name(), dst)
}
