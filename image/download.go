package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// httpClient returns a client whose every phase is bounded: an
// unreachable mirror fails in seconds, not minutes.
func (b *Builder) httpTransport() *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSHandshakeTimeout:   min(10*time.Second, b.stallTimeout()),
		ResponseHeaderTimeout: b.stallTimeout(),
		IdleConnTimeout:       30 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// stallReader cancels a transfer that delivers nothing for d.
type stallReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(s.d)
	}
	return n, err
}

// download fetches rawURL to dst, verifying sha256 (when given) before the
// file appears under its final name, so a failed or tampered download never
// looks like a good one.
func (b *Builder) download(ctx context.Context, rawURL, dst, sha string, rep *reporter) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := b.stallTimeout()
	timer := time.AfterFunc(stall, func() {
		cancel(fmt.Errorf("no data for %v", stall))
	})
	defer timer.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fmt.Errorf("%w: download %s: %w", ErrInvalid, rawURL, err)
	}
	client := &http.Client{Transport: b.httpTransport()}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w", rawURL, causeOr(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: %s", rawURL, resp.Status)
	}
	if err := b.mkdir(filepath.Dir(dst)); err != nil {
		return err
	}
	removeStale(filepath.Dir(dst), ".download-*", time.Hour)
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".download-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	bar := rep.bar("downloading "+filepath.Base(dst), resp.ContentLength)
	body := &stallReader{r: resp.Body, timer: timer, d: stall}
	if _, err := io.Copy(io.MultiWriter(tmp, h, bar), body); err != nil {
		tmp.Close()
		return fmt.Errorf("download %s: %w", rawURL, causeOr(ctx, err))
	}
	bar.done()
	if err := tmp.Close(); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); sha != "" && got != sha {
		return fmt.Errorf("download %s: %w: sha256 %s, want %s", rawURL, ErrChecksum, got, sha)
	}
	return os.Rename(tmp.Name(), dst)
}

// fetchText GETs a small text file (a published checksum).
func (b *Builder) fetchText(ctx context.Context, rawURL string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.stallTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: b.httpTransport()}).Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetch %s: %s", rawURL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(data), err
}

// causeOr prefers the reason a context was cancelled (a stall) over the
// bare "context canceled" it caused.
func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && c != context.Canceled && !strings.Contains(err.Error(), c.Error()) {
		return fmt.Errorf("%w (%w)", c, err)
	}
	return err
}

// sha256File returns the hex sha256 of a file.
func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func verifyFile(path, sha string) error {
	got, err := sha256File(path)
	if err != nil {
		return err
	}
	if got != strings.ToLower(sha) {
		return fmt.Errorf("%w: %s has sha256 %s, want %s", ErrChecksum, path, got, sha)
	}
	return nil
}

// removeStale deletes files matching pattern in dir that are older than
// age: what killed downloads left (a live one keeps its file fresh).
func removeStale(dir, pattern string, age time.Duration) {
	old, _ := filepath.Glob(filepath.Join(dir, pattern))
	for _, p := range old {
		if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) > age {
			os.Remove(p)
		}
	}
}
