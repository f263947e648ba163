// Package oci pulls OCI and Docker images for image.Builder's "oci:"
// sources: from a registry, an OCI image layout directory or a `docker
// save` tarball. It is a package of its own so that only programs that
// build OCI images link a registry client; wire it in with
// image.Builder{OCI: oci.Puller{}}.
package oci

import (
	"context"
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

	"github.com/smolvm/smolvm/image"
)

// platform is the platform smolvm's guests run.
func platform() v1.Platform { return v1.Platform{OS: "linux", Architecture: "amd64"} }

// Puller implements image.OCIPuller. The zero value is ready: registry
// credentials come from the Docker config (~/.docker/config.json and its
// credential helpers), as `docker pull` finds them.
type Puller struct{}

var _ image.OCIPuller = Puller{}

// OpenOCI implements image.OCIPuller: a local layout directory or tarball
// when the reference names one, else a registry.
func (Puller) OpenOCI(ctx context.Context, req image.OCIRequest) (image.OCIImage, error) {
	path, tag := req.Ref, ""
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
				return nil, fmt.Errorf("oci layout %s: %w", path, err)
			}
			return newImage(img, "layout", nil)
		}
		var t *name.Tag
		if tag != "" {
			nt, err := name.NewTag(tag)
			if err != nil {
				return nil, fmt.Errorf("%w: oci tarball tag %q: %w", image.ErrInvalid, tag, err)
			}
			t = &nt
		}
		img, err := tarball.ImageFromPath(path, t)
		if err != nil {
			return nil, fmt.Errorf("oci tarball %s: %w", path, err)
		}
		return newImage(img, "tarball", nil)
	}
	var nopts []name.Option
	if req.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(req.Ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: oci reference %q (not a registry reference, layout directory or tarball): %w", image.ErrInvalid, req.Ref, err)
	}
	ropts := []remote.Option{
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(platform()),
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 2}),
		remote.WithUserAgent("smolvm"),
	}
	if req.Transport != nil {
		ropts = append(ropts, remote.WithTransport(req.Transport))
	}
	stall := req.StallTimeout
	if stall <= 0 {
		stall = 30 * time.Second
	}
	// Resolving asks for a manifest or two: bounded as a whole, so an
	// unreachable registry fails in seconds.
	rctx, cancel := context.WithTimeout(ctx, 3*stall)
	defer cancel()
	img, err := remote.Image(ref, append(ropts, remote.WithContext(rctx))...)
	if err != nil {
		return nil, fmt.Errorf("oci %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("oci %s: %w", ref, err)
	}
	// Layers are fetched later, under the build's context, by digest: the
	// image built is the one fingerprinted even if the tag moves meanwhile.
	pinned := ref.Context().Digest(digest.String())
	return newImage(img, "registry", func(ctx context.Context) (v1.Image, error) {
		return remote.Image(pinned, append(ropts, remote.WithContext(ctx))...)
	})
}

// ociImage is an image found locally or in a registry; refetch, for a
// registry image, fetches it again by digest under the build's context.
type ociImage struct {
	img     v1.Image
	kind    string
	digest  string
	refetch func(context.Context) (v1.Image, error)
}

func newImage(img v1.Image, kind string, refetch func(context.Context) (v1.Image, error)) (*ociImage, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	return &ociImage{img: img, kind: kind, digest: d.String(), refetch: refetch}, nil
}

func (i *ociImage) Kind() string   { return i.kind }
func (i *ociImage) Digest() string { return i.digest }

func (i *ociImage) Contents(ctx context.Context) (*image.OCIContents, error) {
	src := i.img
	if i.refetch != nil {
		var err error
		if src, err = i.refetch(ctx); err != nil {
			return nil, err
		}
	}
	cf, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	ls, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	c := &image.OCIContents{
		OS: cf.OS, Architecture: cf.Architecture,
		Env: cf.Config.Env, Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, WorkingDir: cf.Config.WorkingDir,
	}
	for _, l := range ls {
		c.Layers = append(c.Layers, layer{l})
	}
	return c, nil
}

type layer struct{ l v1.Layer }

func (l layer) Digest() string {
	d, _ := l.l.Digest()
	return d.String()
}

func (l layer) Size() int64 {
	n, _ := l.l.Size()
	return n
}

func (l layer) Open(ctx context.Context) (io.ReadCloser, error) {
	mt, err := l.l.MediaType()
	if err == nil && !mt.IsDistributable() {
		return nil, errors.New("non-distributable (foreign) layer: not a Linux image layer")
	}
	return l.l.Compressed()
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
				if d.Platform != nil && !d.Platform.Satisfies(platform()) {
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
			return nil, fmt.Errorf("%w: no linux/amd64 image tagged %q", image.ErrNotFound, tag)
		}
		return nil, fmt.Errorf("%w: no linux/amd64 image", image.ErrNotFound)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%w: %d images; name one as DIR:TAG (org.opencontainers.image.ref.name)", image.ErrInvalid, len(found))
}
