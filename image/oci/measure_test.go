package oci

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/imagetest"
)

// TestMeasure reports build time (median of 3 forced builds) and image
// size per source, and the cache-hit time. It runs only with
// SMOLVM_IMAGE_MEASURE=1 (about a minute, Debian included):
//
//	SMOLVM_IMAGE_MEASURE=1 SMOLVM_ALPINE_SOURCE=/work/shared/alpine go test -run TestMeasure -v ./image/oci
func TestMeasure(t *testing.T) {
	if os.Getenv("SMOLVM_IMAGE_MEASURE") == "" {
		t.Skip("set SMOLVM_IMAGE_MEASURE=1 to measure build times")
	}
	file := imagetest.AlpineFile(t, image.AlpineSourceEnv, image.AlpineFile)
	b := newBuilder(t)
	b.Progress = nil
	mux := http.NewServeMux()
	mux.HandleFunc("/v3.20/releases/x86_64/"+image.AlpineFile, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, file) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	mirror := srv.URL
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/m/alpine:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, testOCIImage(t)); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(tree, 0o755)
	exec.Command("tar", "-xzf", file, "-C", tree).Run()

	sources := []struct {
		name string
		opts image.BuildOptions
	}{
		{"alpine (HTTP mirror)", image.BuildOptions{From: "alpine", Mirror: mirror}},
		{"oci (local registry)", image.BuildOptions{From: "oci:" + ref}},
		{"dir", image.BuildOptions{From: "dir:" + tree}},
		{"tar", image.BuildOptions{From: "tar:" + file}},
	}
	if _, err := exec.LookPath("mmdebstrap"); err == nil {
		sources = append(sources, struct {
			name string
			opts image.BuildOptions
		}{"debian minbase", image.BuildOptions{From: "debian"}})
	}
	for _, s := range sources {
		var times []time.Duration
		var img *image.Image
		for i := range 3 {
			if i == 0 {
				os.RemoveAll(filepath.Join(b.CacheDir, "downloads"))
			}
			opts := s.opts
			opts.Force = true
			start := time.Now()
			img = mustBuild(t, b, "m", opts)
			times = append(times, time.Since(start))
		}
		slices.Sort(times)
		var hits []time.Duration
		for range 3 {
			start := time.Now()
			mustBuild(t, b, "m", s.opts)
			hits = append(hits, time.Since(start))
		}
		slices.Sort(hits)
		t.Logf("%-22s build median %7v (runs %v)  cache hit median %v  size %d MiB, %d MiB used, %.1f MiB on disk",
			s.name, times[1].Round(time.Millisecond), roundAll(times), hits[1].Round(time.Millisecond),
			img.SizeMiB, img.UsedMiB, float64(img.DiskBytes)/(1<<20))
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
