package image

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/untar"
)

// OCIPuller reads the OCI and Docker images that "oci:" sources name.
// Package image/oci implements it (oci.Puller). It is a Builder field, not
// built in, so that programs which never build OCI images (a program that
// only creates VMs with the root package, say) do not link a registry
// client; Build refuses "oci:" sources while Builder.OCI is nil.
type OCIPuller interface {
	// OpenOCI finds the image req.Ref names and its digest. It may ask a
	// registry for a manifest but fetches no layers.
	OpenOCI(ctx context.Context, req OCIRequest) (OCIImage, error)
}

// OCIRequest is what Build asks an OCIPuller for.
type OCIRequest struct {
	// Ref is a registry reference ("docker.io/library/alpine:3.20",
	// "registry.example.com:5000/app@sha256:…"), an OCI image layout
	// directory (optionally "DIR:TAG") or a `docker save` tarball
	// (optionally "FILE:TAG").
	Ref string
	// Insecure allows a registry over plain HTTP; Transport already skips
	// certificate checks then.
	Insecure bool
	// Transport is for registry requests: proxies from the environment,
	// every phase bounded by StallTimeout.
	Transport http.RoundTripper
	// StallTimeout bounds resolving (a few manifest requests, 3× this in
	// all) and every read of a layer.
	StallTimeout time.Duration
}

// OCIImage is an image an OCIPuller found.
type OCIImage interface {
	// Kind says where it was found: "registry", "layout" or "tarball".
	Kind() string
	// Digest is the image's manifest digest, "sha256:…".
	Digest() string
	// Contents returns the image's config and layers. A registry image is
	// fetched by digest, so what is built is what was resolved even if the
	// tag has moved since.
	Contents(ctx context.Context) (*OCIContents, error)
}

// OCIContents is an image's platform, runtime config and layers.
type OCIContents struct {
	OS, Architecture string
	Env, Entrypoint  []string
	Cmd              []string
	WorkingDir       string
	Layers           []OCILayer
}

// OCILayer is one layer of an OCIImage.
type OCILayer interface {
	// Digest is the layer's digest as the manifest names it.
	Digest() string
	// Size is its compressed size, 0 if unknown.
	Size() int64
	// Open streams the layer as stored (compressed), digest-checked at
	// EOF. It refuses non-distributable (foreign) layers.
	Open(ctx context.Context) (io.ReadCloser, error)
}

// errNoOCI is the error for "oci:" sources when Builder.OCI is nil.
var errNoOCI = fmt.Errorf("oci images: %w by this program: its image.Builder has no OCI field (set it to oci.Puller{} from github.com/smolvm/smolvm/image/oci)", errors.ErrUnsupported)

// ociSource builds from an OCI or Docker image, through b.OCI. Layers are
// applied in order with their whiteouts; the image's Env becomes the VM's
// environment.
type ociSource struct {
	b    *Builder
	ref  string
	opts *BuildOptions
	rep  *reporter
	img  OCIImage // resolved
}

func (s *ociSource) resolve(ctx context.Context) (string, map[string]string, error) {
	tr := s.b.httpTransport()
	if s.opts.Insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	img, err := s.b.OCI.OpenOCI(ctx, OCIRequest{Ref: s.ref, Insecure: s.opts.Insecure, Transport: tr, StallTimeout: s.b.stallTimeout()})
	if err != nil {
		return "", nil, err
	}
	s.img = img
	desc := "oci:" + s.ref
	if !strings.Contains(s.ref, "@") {
		desc += "@" + img.Digest()
	}
	return desc, map[string]string{"source": "oci", "kind": img.Kind(), "digest": img.Digest()}, nil
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

func (s *ociSource) fill(ctx context.Context, dir string, img *Image) error {
	c, err := s.img.Contents(ctx)
	if err != nil {
		return fmt.Errorf("oci %s: %w", s.ref, err)
	}
	if (c.OS != "" && c.OS != "linux") || (c.Architecture != "" && c.Architecture != "amd64") {
		return fmt.Errorf("%w: oci %s is for %s/%s; smolvm guests run linux/amd64", ErrInvalid, s.ref, c.OS, c.Architecture)
	}
	var total int64
	for _, l := range c.Layers {
		total += l.Size()
	}
	bar := s.rep.bar(fmt.Sprintf("pulling %d layers", len(c.Layers)), total)
	for i, l := range c.Layers {
		if err := s.applyLayer(ctx, dir, l, bar); err != nil {
			return fmt.Errorf("oci %s: layer %d (%s): %w", s.ref, i+1, l.Digest(), err)
		}
	}
	bar.done()
	img.Env, img.Entrypoint, img.Cmd, img.WorkingDir = c.Env, c.Entrypoint, c.Cmd, c.WorkingDir
	return nil
}

// applyLayer streams one layer (compressed as the registry serves it,
// digest-checked as it is read) into dir. A stalled transfer fails after
// the stall timeout.
func (s *ociSource) applyLayer(ctx context.Context, dir string, l OCILayer, bar *bar) error {
	rc, err := l.Open(ctx)
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
