package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/untar"
)

// helperEnv makes the test binary build one image and print it as JSON,
// so tests can race real processes (and kill them).
const helperEnv = "SMOLVM_IMAGE_TEST_HELPER"

func helperMain() int {
	var req struct {
		Cache, Agent, Name, Alpine string
		Opts                       BuildOptions
	}
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b := &Builder{CacheDir: req.Cache, Agent: req.Agent, AlpineSource: req.Alpine}
	img, err := b.Build(context.Background(), req.Name, req.Opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(img)
	return 0
}

func helperCmd(t *testing.T, b *Builder, name, alpine string, opts BuildOptions) *exec.Cmd {
	req, _ := json.Marshal(map[string]any{"Cache": b.CacheDir, "Agent": b.Agent, "Name": name, "Alpine": alpine, "Opts": opts})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(req))
	return cmd
}

// TestConcurrentProcesses builds one name from two processes at once:
// one builds, the other waits and gets the same image.
func TestConcurrentProcesses(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	opts := BuildOptions{From: "alpine", SizeMiB: 80}
	var wg sync.WaitGroup
	imgs := make([]Image, 3)
	errs := make([]error, 3)
	for i := range imgs {
		wg.Go(func() {
			var out, stderr bytes.Buffer
			cmd := helperCmd(t, b, "same", file, opts)
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr.String())
				return
			}
			errs[i] = json.Unmarshal(out.Bytes(), &imgs[i])
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	for i := range imgs {
		if !imgs[i].Created.Equal(imgs[0].Created) || imgs[i].Fingerprint != imgs[0].Fingerprint {
			t.Errorf("process %d got another build: %v vs %v", i, imgs[i].Created, imgs[0].Created)
		}
	}
	got, err := b.Get("same")
	if err != nil || !got.Created.Equal(imgs[0].Created) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	fsck(t, got.Rootfs)
	if debris, _ := filepath.Glob(filepath.Join(b.CacheDir, "images", ".build-*")); len(debris) > 0 {
		t.Errorf("staging left behind: %v", debris)
	}
}

// TestKilledBuild kills a build mid-download: no image appears under the
// name, and the next build succeeds and clears the debris.
func TestKilledBuild(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		<-release // stall: the build sits mid-download until killed
	}))
	t.Cleanup(func() { close(release); srv.Close() })

	cmd := helperCmd(t, b, "k", srv.URL+"/"+AlpineFile, BuildOptions{From: "alpine", SizeMiB: 64})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		tmp, _ := filepath.Glob(filepath.Join(b.CacheDir, "downloads", ".download-*"))
		if len(tmp) > 0 {
			if fi, err := os.Stat(tmp[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the helper never started downloading")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := b.Get("k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after a killed build Get = %v, want ErrNotFound", err)
	}
	if debris, _ := filepath.Glob(filepath.Join(b.CacheDir, "images", ".build-k-*")); len(debris) == 0 {
		t.Log("(no staging debris to clear)")
	}
	b.AlpineSource = file
	img := mustBuild(t, b, "k", BuildOptions{From: "alpine", SizeMiB: 64})
	fsck(t, img.Rootfs)
	if debris, _ := filepath.Glob(filepath.Join(b.CacheDir, "images", ".build-k-*")); len(debris) > 0 {
		t.Errorf("debris not cleared: %v", debris)
	}
	if _, err := os.Stat(filepath.Join(b.CacheDir, "downloads", AlpineFile)); err == nil {
		t.Error("a half download was kept under the final name")
	}
}

func TestBadInput(t *testing.T) {
	file := alpineFile(t)
	b := newBuilder(t)
	ctx := context.Background()
	for _, name := range []string{"", "../x", "a/b", "/abs", ".hidden", "-flag", "a b", "x\x00", strings.Repeat("n", 65)} {
		if _, err := b.Build(ctx, name, BuildOptions{From: "alpine"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v, want ErrInvalid", name, err)
		}
		if _, err := b.Get(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("Get(%q): %v, want ErrInvalid", name, err)
		}
	}
	for _, from := range []string{"", "ubuntu", "oci:", "dir:", "alpine:latest", "debian:Bad_Suite", "alpine:3.20.3/../x"} {
		if _, err := b.Build(ctx, "x", BuildOptions{From: from}); !errors.Is(err, ErrInvalid) {
			t.Errorf("source %q: %v, want ErrInvalid", from, err)
		}
	}
	if _, err := b.Build(ctx, "x", BuildOptions{From: "alpine", Packages: []string{"curl"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("packages on alpine: %v, want ErrInvalid", err)
	}
	if _, err := b.Build(ctx, "x", BuildOptions{From: "alpine", AuthorizedKeys: []string{"not a key"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad key: %v, want ErrInvalid", err)
	}

	t.Run("unreachable mirror", func(t *testing.T) {
		for _, mirror := range []string{"http://127.0.0.1:1", blackHole(t)} {
			b := newBuilder(t)
			b.StallTimeout = 2 * time.Second
			start := time.Now()
			_, err := b.Build(ctx, "u", BuildOptions{From: "alpine", Mirror: mirror})
			took := time.Since(start)
			t.Logf("%s: %v after %v", mirror, err, took)
			if err == nil || !strings.Contains(err.Error(), "download") || !strings.Contains(err.Error(), AlpineSourceEnv) {
				t.Errorf("unreachable mirror %s: %v", mirror, err)
			}
			if took > 10*time.Second {
				t.Errorf("took %v to give up", took)
			}
			if _, err := b.Get("u"); !errors.Is(err, ErrNotFound) {
				t.Errorf("image left after failure: %v", err)
			}
		}
	})

	t.Run("checksum mismatch", func(t *testing.T) {
		b := newBuilder(t)
		bad := filepath.Join(t.TempDir(), AlpineFile)
		data, _ := os.ReadFile(file)
		data[len(data)/2] ^= 0xff
		os.WriteFile(bad, data, 0o644)
		mirror, _ := alpineMirror(t, bad)
		_, err := b.Build(ctx, "sum", BuildOptions{From: "alpine", Mirror: mirror})
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("tampered download: %v, want ErrChecksum", err)
		}
		if _, err := b.Get("sum"); !errors.Is(err, ErrNotFound) {
			t.Errorf("image cached after a checksum mismatch: %v", err)
		}
		if files, _ := os.ReadDir(filepath.Join(b.CacheDir, "downloads")); len(files) > 0 {
			t.Errorf("download kept after a checksum mismatch: %v", files)
		}
		// A local file is checked the same way.
		if _, err := b.Build(ctx, "sum", BuildOptions{From: "alpine", Mirror: bad}); !errors.Is(err, ErrChecksum) {
			t.Errorf("tampered local file: %v, want ErrChecksum", err)
		}
	})

	t.Run("corrupt tarball", func(t *testing.T) {
		b := newBuilder(t)
		data, _ := os.ReadFile(file)
		dir := t.TempDir()
		for name, content := range map[string][]byte{
			"truncated.tar.gz": data[:len(data)/2],
			"garbage.tar":      bytes.Repeat([]byte("not a tarball "), 100),
			"empty.tar":        {},
		} {
			p := filepath.Join(dir, name)
			os.WriteFile(p, content, 0o644)
			_, err := b.Build(ctx, "corrupt", BuildOptions{From: "tar:" + p})
			if !errors.Is(err, untar.ErrCorrupt) {
				t.Errorf("%s: %v, want ErrCorrupt", name, err)
			}
			if _, err := b.Get("corrupt"); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: image cached: %v", name, err)
			}
		}
		// Unpinned version with its checksum given but a corrupt file.
		p := filepath.Join(dir, "alpine-minirootfs-3.19.1-x86_64.tar.gz")
		os.WriteFile(p, data[:len(data)/2], 0o644)
		sum, _ := sha256File(p)
		if _, err := b.Build(ctx, "corrupt", BuildOptions{From: "alpine:3.19.1", Mirror: dir, SHA256: sum}); !errors.Is(err, untar.ErrCorrupt) {
			t.Errorf("corrupt alpine release: %v, want ErrCorrupt", err)
		}
		if _, err := b.Build(ctx, "corrupt", BuildOptions{From: "alpine:3.19.1", Mirror: dir}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "sha256") {
			t.Errorf("unpinned version without a checksum: %v", err)
		}
	})
}
