package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/statedir"
)

// formatVersion changes whenever what the builder puts into a root
// filesystem changes, so images built by an older smolvm rebuild.
const formatVersion = "4"

// fingerprint hashes every input of a build, so a changed input rebuilds.
func fingerprint(inputs map[string]string) string {
	keys := make([]string, 0, len(inputs))
	for k := range inputs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%q\n", k, inputs[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// cached returns the image called name if its fingerprint is fp and
// match accepts it (and force is off); otherwise it runs build in a fresh staging directory and
// puts the result in place with one atomic rename, so readers see the old
// image or the new one, never a torn one. A per-name lock file keeps two
// processes from building the same name at once: the second waits and then
// finds the first one's image. Staging directories a killed build left are
// removed by the next build of that name; nothing reads them.
func (b *Builder) cached(ctx context.Context, name, fp string, force bool, match func(*Image) bool, build func(dir string) (*Image, error)) (*Image, error) {
	if img, err := b.Get(name); err == nil && img.Fingerprint == fp && !force && match(img) {
		return img, nil
	}
	unlock, err := b.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if img, err := b.Get(name); err == nil && img.Fingerprint == fp && !force && match(img) {
		return img, nil // another process built it while we waited
	}
	root := b.imagesDir()
	b.removeDebris(name)
	staging, err := os.MkdirTemp(root, ".build-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	// Private like all of the state directory (MkdirTemp makes it 0700).
	// Tools that drop privileges cope: mmdebstrap then downloads as root.
	start := time.Now()
	img, err := build(staging)
	if err != nil {
		return nil, err
	}
	final := filepath.Join(root, name)
	img.Name, img.Fingerprint, img.Created = name, fp, time.Now().UTC()
	img.BuildTime = Duration(time.Since(start))
	img.Rootfs = filepath.Join(final, filepath.Base(img.Rootfs))
	manifest, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(staging, "image.json"), append(manifest, '\n'), statedir.FileMode); err != nil {
		return nil, err
	}
	if err := syncDir(staging); err != nil {
		return nil, err
	}
	// Swap atomically when an old image is there (RENAME_EXCHANGE), so
	// there is no moment without one; the old one then sits in staging
	// and goes with it.
	err = unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = os.Rename(staging, final)
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: install: %w", name, err)
	}
	syncDir(root)
	return img, nil
}

// removeDebris deletes staging and trash directories of name that a
// killed process left. The caller holds name's lock.
func (b *Builder) removeDebris(name string) {
	for _, pat := range []string{".build-" + name + "-*", ".rm-" + name + "-*"} {
		old, _ := filepath.Glob(filepath.Join(b.imagesDir(), pat))
		for _, d := range old {
			// A longer name sharing this prefix has its own lock.
			if strings.Count(strings.TrimPrefix(filepath.Base(d), pat[:len(pat)-1]), "-") == 0 {
				os.RemoveAll(d)
			}
		}
	}
}

// lock takes the per-name build lock.
func (b *Builder) lock(ctx context.Context, name string) (func(), error) {
	if err := b.mkdir(b.imagesDir()); err != nil {
		return nil, err
	}
	return flock.Lock(ctx, filepath.Join(b.imagesDir(), "."+name+".lock"), statedir.FileMode)
}

// mkdir creates dir, a directory of the cache, private like the cache.
func (b *Builder) mkdir(dir string) error { return statedir.MkdirAll(b.cacheDir(), dir) }

func writeFileSync(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
