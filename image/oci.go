package image

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/smolvm/smolvm/internal/untar"
)

// ociPlatform is the platform smolvm's guests run.
var ociPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// ociSource builds from an OCI or Docker image: a registry reference
// ("docker.io/library/alpine:3.20", "registry.example.com:5000/app@sha256:…"),
// an OCI image layout directory (optionally "DIR:TAG"), or a `docker save`
// tarball (optionally "FILE:TAG"). Layers are applied in order with their
// whiteouts; the image's Env becomes the VM's environment.
type ociSource struct {
	b    *Builder
	ref  string
	opts *BuildOptions
	rep  *reporter
	img  v1.Image // resolved
	desc string
	// A registry image is fetched again, by digest, when filling.
	pinned     name.Reference
	remoteOpts []remote.Option
}

func (s *ociSource) resolve(ctx context.Context) (string, map[string]string, error) {
	img, kind, err := s.open(ctx)
	if err != nil {
		return "", nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", nil, fmt.Errorf("oci %s: %w", s.ref, err)
	}
	s.img = img
	s.desc = "oci:" + s.ref
	if !strings.Contains(s.ref, "@") {
		s.desc += "@" + digest.String()
	}
	return s.desc, map[string]string{"source": "oci", "kind": kind, "digest": digest.String()}, nil
}

// offlineInputs returns the fingerprint inputs img was built with, if img
// was built from this registry reference.
func (s *ociSource) offlineInputs(img *Image) (map[string]string, bool) {
	if img.Source != "oci:"+s.ref && !strings.HasPrefix(img.Source, "oci:"+s.ref+"@") {
		return nil, false
	}
	digest := img.Source[strings.LastIndex(img.Source, "@")+1:]
	return map[string]string{"source": "oci", "kind": "registry", "digest": digest}, true
}

// open finds the image: a local layout directory or tarball when the
// reference names one, else a registry.
func (s *ociSource) open(ctx context.Context) (v1.Image, string, error) {
	path, tag := s.ref, ""
	if _, err := os.Stat(path); err != nil {
		if i := strings.LastIndex(path, ":"); i > 0 && !strings.Contains(path[i:], "/") {
			if _, err := os.Stat(path[:i]); err == nil {
				path, tag = path[:i], path[i+1:]
			}
		}
	}
	if fi, err := os.Stat(path); err == nil {
		if fi.IsDir() {
			img, err := layoutImage(path, tag)
			if err != nil {
				return nil, "", fmt.Errorf("oci layout %s: %w", path, err)
			}
			return img, "layout", nil
		}
		var t *name.Tag
		if tag != "" {
			nt, err := name.NewTag(tag)
			if err != nil {
				return nil, "", fmt.Errorf("%w: oci tarball tag %q: %w", ErrInvalid, tag, err)
			}
			t = &nt
		}
		img, err := tarball.ImageFromPath(path, t)
		if err != nil {
			return nil, "", fmt.Errorf("oci tarball %s: %w", path, err)
		}
		return img, "tarball", nil
	}
	var nopts []name.Option
	if s.opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(s.ref, nopts...)
	if err != nil {
		return nil, "", fmt.Errorf("%w: oci reference %q (not a registry reference, layout directory or tarball): %w", ErrInvalid, s.ref, err)
	}
	tr := s.b.httpTransport()
	if s.opts.Insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	s.remoteOpts = []remote.Option{
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(ociPlatform),
		remote.WithTransport(tr),
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 2}),
		remote.WithUserAgent("smolvm"),
	}
	// Resolving asks for a manifest or two: bounded as a whole, so an
	// unreachable registry fails in seconds.
	rctx, cancel := context.WithTimeout(ctx, 3*s.b.stallTimeout())
	defer cancel()
	img, err := remote.Image(ref, append(s.remoteOpts, remote.WithContext(rctx))...)
	if err != nil {
		return nil, "", fmt.Errorf("oci %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, "", fmt.Errorf("oci %s: %w", ref, err)
	}
	// Layers are fetched later, under the build's context, by digest: the
	// image built is the one fingerprinted even if the tag moves meanwhile.
	s.pinned = ref.Context().Digest(digest.String())
	return img, "registry", nil
}

// layoutImage picks the image in an OCI layout: the one whose ref name
// annotation is tag (when given), else the only linux/amd64 image.
func layoutImage(dir, tag string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	var found []v1.Image
	var walk func(ii v1.ImageIndex, depth int) error
	walk = func(ii v1.ImageIndex, depth int) error {
		m, err := ii.IndexManifest()
		if err != nil {
			return err
		}
		for _, d := range m.Manifests {
			if depth == 0 && tag != "" && d.Annotations["org.opencontainers.image.ref.name"] != tag {
				continue
			}
			switch {
			case d.MediaType.IsIndex() && depth < 4:
				child, err := ii.ImageIndex(d.Digest)
				if err != nil {
					return err
				}
				if err := walk(child, depth+1); err != nil {
					return err
				}
			case d.MediaType.IsImage():
				if d.Platform != nil && !d.Platform.Satisfies(ociPlatform) {
					continue
				}
				img, err := ii.Image(d.Digest)
				if err != nil {
					return err
				}
				found = append(found, img)
			}
		}
		return nil
	}
	if err := walk(idx, 0); err != nil {
		return nil, err
	}
	switch len(found) {
	case 0:
		if tag != "" {
			return nil, fmt.Errorf("%w: no linux/amd64 image tagged %q", ErrNotFound, tag)
		}
		return nil, fmt.Errorf("%w: no linux/amd64 image", ErrNotFound)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%w: %d images; name one as DIR:TAG (org.opencontainers.image.ref.name)", ErrInvalid, len(found))
}

func (s *ociSource) fill(ctx context.Context, dir string, img *Image) error {
	src := s.img
	if s.pinned != nil {
		var err error
		if src, err = remote.Image(s.pinned, append(s.remoteOpts, remote.WithContext(ctx))...); err != nil {
			return fmt.Errorf("oci %s: %w", s.ref, err)
		}
	}
	cf, err := src.ConfigFile()
	if err != nil {
		return fmt.Errorf("oci %s: config: %w", s.ref, err)
	}
	if (cf.OS != "" && cf.OS != "linux") || (cf.Architecture != "" && cf.Architecture != "amd64") {
		return fmt.Errorf("%w: oci %s is for %s/%s; smolvm guests run linux/amd64", ErrInvalid, s.ref, cf.OS, cf.Architecture)
	}
	layers, err := src.Layers()
	if err != nil {
		return fmt.Errorf("oci %s: layers: %w", s.ref, err)
	}
	var total int64
	for _, l := range layers {
		if n, err := l.Size(); err == nil {
			total += n
		}
	}
	bar := s.rep.bar(fmt.Sprintf("pulling %d layers", len(layers)), total)
	for i, l := range layers {
		if err := s.applyLayer(ctx, dir, l, bar); err != nil {
			d, _ := l.Digest()
			return fmt.Errorf("oci %s: layer %d (%s): %w", s.ref, i+1, d, err)
		}
	}
	bar.done()
	img.Env, img.Entrypoint, img.Cmd, img.WorkingDir = cf.Config.Env, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.WorkingDir
	return nil
}

// applyLayer streams one layer (compressed as the registry serves it,
// digest-checked as it is read) into dir. A stalled transfer fails after
// the stall timeout.
func (s *ociSource) applyLayer(ctx context.Context, dir string, l v1.Layer, bar *bar) error {
	mt, err := l.MediaType()
	if err == nil && !mt.IsDistributable() {
		return errors.New("non-distributable (foreign) layer: not a Linux image layer")
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	stall := s.b.stallTimeout()
	timer := time.AfterFunc(stall, func() { rc.Close() })
	defer timer.Stop()
	r, err := untar.Decompress(&stallReader{r: io.TeeReader(rc, bar), timer: timer, d: stall})
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := untar.Apply(dir, r, unpackOptions(true)); err != nil {
		return err
	}
	// Read to the end: the digest is checked at EOF.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	return ctx.Err()
}
