package smolvm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/guest"
)

// TestGuestFS boots one VM for the in-memory file API and watches.
func TestGuestFS(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkUser))
	startVM(t, ctx, vm)
	gfs := vm.FS()

	t.Run("write read stat", func(t *testing.T) {
		data := []byte("hello\x00world\n")
		if err := gfs.WriteFile(ctx, "/root/a/b/c.txt", data, 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := gfs.ReadFile(ctx, "/root/a/b/c.txt")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
		fi, err := gfs.Stat(ctx, "/root/a/b/c.txt")
		if err != nil || fi.Name != "c.txt" || fi.Type != "file" || fi.Size != int64(len(data)) || fi.Perm != 0o640 || time.Since(fi.ModTime) > time.Hour {
			t.Fatalf("stat: %+v, %v", fi, err)
		}
		empty := "/root/empty"
		if err := gfs.WriteFile(ctx, empty, nil, 0); err != nil {
			t.Fatal(err)
		}
		if got, err := gfs.ReadFile(ctx, empty); err != nil || len(got) != 0 {
			t.Fatalf("empty file: %q, %v", got, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		run(t, ctx, vm, "mkdir -p /root/e/full && touch /root/e/full/x /root/e/file && ln -s /etc/hostname /root/e/link && head -c 3000 /dev/zero > /root/e/big")
		for _, tc := range []struct {
			name string
			err  error
			want error
		}{
			{"read missing", read(ctx, gfs, "/root/e/nope"), fs.ErrNotExist},
			{"read dir", read(ctx, gfs, "/root/e"), syscall.EISDIR},
			{"read over cap", readLimit(ctx, gfs, "/root/e/big", 2999), smolvm.ErrTooLarge},
			{"write onto dir", gfs.WriteFile(ctx, "/root/e/full", []byte("x"), 0), syscall.EISDIR},
			{"write relative", gfs.WriteFile(ctx, "root/x", nil, 0), smolvm.ErrInvalid},
			{"stat missing", stat(ctx, gfs, "/root/e/nope"), fs.ErrNotExist},
			{"stat beneath a file", stat(ctx, gfs, "/root/e/file/x"), syscall.ENOTDIR},
			{"list missing", list(ctx, gfs, "/root/e/nope"), fs.ErrNotExist},
			{"list file", list(ctx, gfs, "/root/e/file"), syscall.ENOTDIR},
			{"mkdir exists", gfs.Mkdir(ctx, "/root/e/full", 0), fs.ErrExist},
			{"mkdir no parent", gfs.Mkdir(ctx, "/root/e/no/such", 0), fs.ErrNotExist},
			{"mkdirall over file", gfs.MkdirAll(ctx, "/root/e/file/sub", 0), syscall.ENOTDIR},
			{"remove missing", gfs.Remove(ctx, "/root/e/nope"), fs.ErrNotExist},
			{"remove full dir", gfs.Remove(ctx, "/root/e/full"), syscall.ENOTEMPTY},
			{"remove root", gfs.RemoveAll(ctx, "/"), smolvm.ErrInvalid},
			{"rename missing", gfs.Rename(ctx, "/root/e/nope", "/root/e/x"), fs.ErrNotExist},
			{"rename dir over full dir", notEmpty(gfs.Rename(ctx, "/root/a", "/root/e/full")), syscall.ENOTEMPTY},
			{"permission", gfs.Remove(ctx, "/proc/version"), fs.ErrPermission},
		} {
			if !errors.Is(tc.err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
			}
		}
	})

	t.Run("dirs", func(t *testing.T) {
		if err := gfs.MkdirAll(ctx, "/root/d/x/y", 0o700); err != nil {
			t.Fatal(err)
		}
		if err := gfs.MkdirAll(ctx, "/root/d/x/y", 0); err != nil {
			t.Fatalf("mkdirall of an existing dir: %v", err)
		}
		if err := gfs.Mkdir(ctx, "/root/d/m", 0o750); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, vm, "printf abc > /root/d/f && ln -s ../target /root/d/l")
		ents, err := gfs.ReadDir(ctx, "/root/d")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, fmt.Sprintf("%s %s %o %d %s", e.Name, e.Type, e.Perm, sizeOf(e), e.Target))
		}
		want := []string{"f file 644 3 ", "l symlink 777 0 ../target", "m dir 750 0 ", "x dir 700 0 "}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("listing:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if err := gfs.Rename(ctx, "/root/d/f", "/root/d/m/g"); err != nil {
			t.Fatal(err)
		}
		if b, err := gfs.ReadFile(ctx, "/root/d/m/g"); err != nil || string(b) != "abc" {
			t.Fatalf("renamed file: %q, %v", b, err)
		}
		if err := gfs.Remove(ctx, "/root/d/l"); err != nil {
			t.Fatal(err)
		}
		if err := gfs.RemoveAll(ctx, "/root/d"); err != nil {
			t.Fatal(err)
		}
		if err := gfs.RemoveAll(ctx, "/root/d"); err != nil {
			t.Fatalf("removeall of a missing path: %v", err)
		}
		if _, err := gfs.Stat(ctx, "/root/d"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("after RemoveAll: %v", err)
		}
	})

	t.Run("copy archive", func(t *testing.T) {
		old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
		src := filepath.Join(t.TempDir(), "tree")
		os.MkdirAll(filepath.Join(src, "sub"), 0o775)
		os.WriteFile(filepath.Join(src, "sub", "f"), []byte("f"), 0o664)
		os.Chmod(filepath.Join(src, "sub"), 0o775) // past the umask
		os.Chmod(filepath.Join(src, "sub", "f"), 0o664)
		for _, p := range []string{"sub/f", "sub", "."} {
			os.Chtimes(filepath.Join(src, p), old, old)
		}
		if err := gfs.MkdirAll(ctx, "/root/cpa", 0); err != nil {
			t.Fatal(err)
		}
		// Into an existing directory: under its own name, as cp -a does.
		if err := vm.UploadWith(ctx, src, "/root/cpa", smolvm.CopyOptions{Archive: true}); err != nil {
			t.Fatal(err)
		}
		for p, perm := range map[string]fs.FileMode{"/root/cpa/tree/sub/f": 0o664, "/root/cpa/tree/sub": 0o775, "/root/cpa/tree": 0o755} {
			fi, err := gfs.Stat(ctx, p)
			if err != nil || !fi.ModTime.Equal(old) || (p != "/root/cpa/tree" && fi.Perm != perm) {
				t.Errorf("uploaded %s: %+v, %v; want mode %o, mtime %s", p, fi, err, perm, old)
			}
		}
		for _, tc := range []struct {
			archive bool
			perm    fs.FileMode
		}{{true, 0o664}, {false, 0o644}} {
			dst := t.TempDir()
			if err := vm.DownloadWith(ctx, "/root/cpa/tree", dst, smolvm.CopyOptions{Archive: tc.archive}); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(filepath.Join(dst, "tree", "sub", "f"))
			if err != nil || fi.Mode().Perm() != tc.perm || fi.ModTime().Equal(old) != tc.archive {
				t.Errorf("archive %v: downloaded file %v, mtime %v; want mode %o, old mtime %v", tc.archive, modeOf(fi, err), fi.ModTime(), tc.perm, tc.archive)
			}
			di, err := os.Stat(filepath.Join(dst, "tree", "sub"))
			if err != nil || di.ModTime().Equal(old) != tc.archive {
				t.Errorf("archive %v: downloaded dir mtime %v, want old %v", tc.archive, di.ModTime(), tc.archive)
			}
		}
	})

	t.Run("watch", func(t *testing.T) {
		if err := gfs.MkdirAll(ctx, "/root/w", 0); err != nil {
			t.Fatal(err)
		}
		w := startWatch(t, ctx, gfs, "/root/w", false)
		run(t, ctx, vm, "cd /root/w && echo a > f && mv f g && rm g && mkdir sub && echo x > sub/ignored && echo y > last")
		w.expect(t, "create f", "modify f", "rename f g", "remove g", "create sub/", "create last", "modify last")
		w.stop(t)
	})

	t.Run("watch recursive", func(t *testing.T) {
		if err := gfs.MkdirAll(ctx, "/root/wr/old", 0); err != nil {
			t.Fatal(err)
		}
		w := startWatch(t, ctx, gfs, "/root/wr", true)
		run(t, ctx, vm, "cd /root/wr && mkdir -p new/deep && echo x > new/deep/f && echo y > old/g && mv old renamed && echo z > renamed/h && rm -r new")
		// Whether new/deep/f is seen by a watch or by the scan of a new
		// directory (then without its modify) is a race: expect in order,
		// skipping what else comes.
		w.expectInOrder(t, "create new/", "create new/deep/", "create new/deep/f", "create old/g", "modify old/g",
			"rename old/ renamed/", "create renamed/h", "modify renamed/h", "remove new/deep/", "remove new/")
		w.stop(t)
	})

	t.Run("watch missing", func(t *testing.T) {
		err := gfs.Watch(ctx, "/root/nope", smolvm.WatchOptions{}, func(smolvm.WatchEvent) {})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("watch a missing dir: %v, want fs.ErrNotExist", err)
		}
	})

	// Hostile: the guest creates files as fast as it can while the host's
	// callback is stuck; the host queues at most guest.WatchQueue events
	// and reports the rest as dropped.
	t.Run("watch flood", func(t *testing.T) {
		if err := gfs.MkdirAll(ctx, "/root/flood", 0); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ready, release := make(chan struct{}), make(chan struct{})
		events := make(chan smolvm.WatchEvent, 2*guest.WatchQueue+10)
		done := make(chan error, 1)
		go func() {
			first := true
			done <- gfs.Watch(wctx, "/root/flood", smolvm.WatchOptions{Ready: func() { close(ready) }}, func(e smolvm.WatchEvent) {
				if first {
					first = false
					<-release // the slow consumer
					return
				}
				select {
				case events <- e:
				default:
					t.Errorf("more events delivered than the host can have queued")
				}
			})
		}()
		<-ready
		const n = 3000
		run(t, ctx, vm, fmt.Sprintf("cd /root/flood && seq 1 %d | xargs touch", n))
		close(release)
		// The overflow is reported ahead of the next event that finds room.
		var overflow, got int
		seen := make(chan struct{})
		go func() {
			defer close(seen)
			// Only the flood's events count: the touches that mark its
			// end are repeated until one is seen, as often as a loaded
			// host takes to drain the queue.
			for e := range events {
				switch {
				case e.Op == smolvm.WatchOverflow:
					overflow += e.Dropped
				case strings.HasPrefix(e.Path, "after"):
					return
				default:
					got++
				}
			}
		}()
		i := 0
		retryUntil(t, seen, func() {
			i++
			run(t, ctx, vm, fmt.Sprintf("touch /root/flood/after%d", i))
		})
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch ended with %v, want context.Canceled", err)
		}
		if overflow == 0 || got > guest.WatchQueue+10 {
			t.Fatalf("%d events delivered, %d reported dropped: want an overflow and at most ~%d delivered", got, overflow, guest.WatchQueue)
		}
		t.Logf("flood of %d creates: %d delivered, %d dropped", n, got, overflow)
	})
}

// retryUntil calls try, then again every second, until done is closed
// (at most a minute).
func retryUntil(t *testing.T, done <-chan struct{}, try func()) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		try()
		select {
		case <-done:
			return
		case <-time.After(time.Second):
		}
	}
	t.Fatal("nothing within a minute")
}

// notEmpty: rename(2) onto a directory with entries may say EEXIST or
// ENOTEMPTY (POSIX allows both).
func notEmpty(err error) error {
	if errors.Is(err, syscall.EEXIST) {
		return syscall.ENOTEMPTY
	}
	return err
}

func sizeOf(e smolvm.FileInfo) int64 {
	if e.Type == "file" {
		return e.Size
	}
	return 0
}

func read(ctx context.Context, f *smolvm.FS, p string) error {
	_, err := f.ReadFile(ctx, p)
	return err
}

func readLimit(ctx context.Context, f *smolvm.FS, p string, n int64) error {
	_, err := f.ReadFileLimit(ctx, p, n)
	return err
}

func stat(ctx context.Context, f *smolvm.FS, p string) error {
	_, err := f.Stat(ctx, p)
	return err
}

func list(ctx context.Context, f *smolvm.FS, p string) error {
	_, err := f.ReadDir(ctx, p)
	return err
}

type watching struct {
	events chan smolvm.WatchEvent
	cancel context.CancelFunc
	done   chan error
}

// startWatch watches dir and returns once the guest watches it.
func startWatch(t *testing.T, ctx context.Context, gfs *smolvm.FS, dir string, recursive bool) *watching {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	w := &watching{events: make(chan smolvm.WatchEvent, 1000), cancel: cancel, done: make(chan error, 1)}
	t.Cleanup(cancel)
	ready := make(chan struct{})
	go func() {
		w.done <- gfs.Watch(wctx, dir, smolvm.WatchOptions{Recursive: recursive, Ready: func() { close(ready) }}, func(e smolvm.WatchEvent) { w.events <- e })
	}()
	select {
	case <-ready:
	case err := <-w.done:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the watch was not ready within a minute")
	}
	return w
}

func describe(e smolvm.WatchEvent) string {
	p := func(s string) string {
		if e.Dir {
			return s + "/"
		}
		return s
	}
	if e.Op == smolvm.WatchRename {
		return "rename " + p(e.OldPath) + " " + p(e.Path)
	}
	if e.Op == smolvm.WatchOverflow {
		return "overflow"
	}
	return string(e.Op) + " " + p(e.Path)
}

// expect reads events until it has seen want in order; events of the
// temporary files WriteFile makes are skipped.
func (w *watching) expect(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	timeout := time.After(time.Minute)
	for len(got) < len(want) {
		select {
		case e := <-w.events:
			d := describe(e)
			if strings.Contains(d, ".smolvm-") {
				continue
			}
			got = append(got, d)
		case <-timeout:
			t.Fatalf("events so far:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// expectInOrder reads events until it has seen want in order, skipping
// others.
func (w *watching) expectInOrder(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	timeout := time.After(time.Minute)
	for i := 0; i < len(want); {
		select {
		case e := <-w.events:
			d := describe(e)
			got = append(got, d)
			if d == want[i] {
				i++
			}
		case <-timeout:
			t.Fatalf("events so far:\n%s\nwant in order\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func (w *watching) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case err := <-w.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled watch returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the watch did not end within 30s of its cancel")
	}
}
