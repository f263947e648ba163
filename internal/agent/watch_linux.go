package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The smolvm-watch subsystem streams inotify events of one directory as
// NDJSON on stdout, until the client closes the channel. The client
// writes one JSON request line and keeps its side open.
const (
	// maxWatches bounds the directories one recursive watch holds.
	maxWatches = 8192
	// maxDirty bounds the files tracked for IN_MODIFY coalescing.
	maxDirty = 1 << 16
	// movePairWait is how long, in milliseconds, an IN_MOVED_FROM waits
	// for its IN_MOVED_TO in a later read.
	movePairWait = 100
	watchMask    = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
		unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
		unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK
)

type watchRequest struct {
	Path      string `json:"path"`
	Recursive bool   `json:"recursive,omitempty"`
}

// watchEvent is one line of the stream; see internal/guest's WatchEvent.
type watchEvent struct {
	Op      string `json:"op"`             // ready (first), create, modify, remove, rename, overflow, error
	Path    string `json:"path,omitempty"` // relative to the watched directory, "." for itself
	Old     string `json:"old,omitempty"`  // rename: the old path
	Dir     bool   `json:"dir,omitempty"`
	Message string `json:"message,omitempty"`
	Errno   string `json:"errno,omitempty"` // error: the errno's name
}

// startWatch serves smolvm-watch: it reads the request, then streams.
func (s *session) startWatch() (func(), error) {
	return func() {
		s.wg.Go(func() {
			code := uint32(0)
			if err := s.serveWatch(); err != nil {
				ev := watchEvent{Op: "error", Message: err.Error()}
				if fe := fsFail(err).Error; fe != nil {
					ev.Errno = fe.Errno
				}
				data, _ := json.Marshal(ev)
				_, _ = s.ch.Write(append(data, '\n'))
				code = 1
			}
			s.sendExitStatus(code)
			_ = s.ch.Close()
		})
	}, nil
}

func (s *session) serveWatch() error {
	line, err := bufio.NewReaderSize(io.LimitReader(s.ch, maxFSRequest), maxFSRequest).ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	var req watchRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("parse request: %w", err)
	}
	if !filepath.IsAbs(req.Path) {
		return fmt.Errorf("path %q: %w: must be absolute", req.Path, unix.EINVAL)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	// Non-blocking, so the runtime poller owns it and Close ends a Read.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	w := &watcher{fd: fd, root: filepath.Clean(req.Path), recursive: req.Recursive,
		dirs: map[int]string{}, dirty: map[string]int{}, out: bufio.NewWriter(s.ch)}
	if _, err := w.add("."); err != nil {
		return err
	}
	if req.Recursive {
		w.scan(".", false)
	}
	// Everything is watched from here on: say so, so the client knows
	// that a change it makes now will be seen.
	w.emit(watchEvent{Op: "ready"})
	// The client closing its side (or the channel) ends the watch.
	go func() {
		_, _ = io.Copy(io.Discard, s.ch)
		f.Close()
	}()
	if err := w.out.Flush(); err != nil {
		return nil
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("inotify read: %w", err)
		}
		done := w.batch(buf[:n])
		// A rename's two halves may come in two reads: give the second
		// a moment before taking the first for a move out of the tree.
		if !done && len(w.moves) > 0 {
			if ready, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, movePairWait); ready > 0 {
				continue
			}
			w.flushMoves()
		}
		if err := w.out.Flush(); err != nil {
			return nil // the client is gone
		}
		if done {
			return nil
		}
	}
}

type watcher struct {
	fd        int
	root      string
	recursive bool
	dirs      map[int]string // watch descriptor -> directory, relative to root
	dirty     map[string]int // files written since their last close: IN_MODIFY count
	out       *bufio.Writer
	full      bool // maxWatches reached and reported
	// moves are IN_MOVED_FROMs awaiting their IN_MOVED_TO, by cookie,
	// in the order they came.
	moves map[uint32]move
	order []uint32
}

type move struct {
	path string
	dir  bool
}

func (w *watcher) emit(e watchEvent) {
	data, _ := json.Marshal(e)
	_, _ = w.out.Write(append(data, '\n'))
}

// add watches the directory rel.
func (w *watcher) add(rel string) (int, error) {
	if len(w.dirs) >= maxWatches {
		if !w.full {
			w.full = true
			w.emit(watchEvent{Op: "overflow", Message: fmt.Sprintf("more than %d directories: deeper ones are not watched", maxWatches)})
		}
		return -1, fmt.Errorf("more than %d directories", maxWatches)
	}
	wd, err := unix.InotifyAddWatch(w.fd, filepath.Join(w.root, rel), watchMask)
	if err != nil {
		return -1, fmt.Errorf("watch %s: %w", filepath.Join(w.root, rel), err)
	}
	w.dirs[wd] = rel
	return wd, nil
}

// scan watches the directories beneath rel; with report it also emits a
// create for every entry, since they may have appeared before the watch
// (mkdir -p a/b && touch a/b/f races with adding a's watch).
func (w *watcher) scan(rel string, report bool) {
	ents, err := os.ReadDir(filepath.Join(w.root, rel))
	if err != nil {
		return
	}
	for _, e := range ents {
		p := path.Join(rel, e.Name())
		if report {
			w.emit(watchEvent{Op: "create", Path: p, Dir: e.IsDir()})
		}
		if e.IsDir() {
			if _, err := w.add(p); err != nil {
				continue
			}
			w.scan(p, report)
		}
	}
}

// batch handles one read's events; it reports whether the watched
// directory itself is gone.
func (w *watcher) batch(buf []byte) bool {
	if w.moves == nil {
		w.moves = map[uint32]move{}
	}
	gone := false
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		nameEnd := off + unix.SizeofInotifyEvent + int(ev.Len)
		if nameEnd > len(buf) {
			break
		}
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:nameEnd]), "\x00")
		off = nameEnd
		mask := ev.Mask
		if mask&unix.IN_Q_OVERFLOW != 0 {
			w.emit(watchEvent{Op: "overflow", Message: "the guest's inotify queue overflowed: events were lost"})
			continue
		}
		dir, ok := w.dirs[int(ev.Wd)]
		if !ok {
			continue
		}
		if mask&unix.IN_IGNORED != 0 {
			delete(w.dirs, int(ev.Wd))
			continue
		}
		if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			if dir == "." {
				w.emit(watchEvent{Op: "remove", Path: ".", Dir: true})
				gone = true
			}
			continue
		}
		p := path.Join(dir, name)
		isDir := mask&unix.IN_ISDIR != 0
		switch {
		case mask&unix.IN_CREATE != 0:
			w.emit(watchEvent{Op: "create", Path: p, Dir: isDir})
			if isDir && w.recursive {
				if _, err := w.add(p); err == nil {
					w.scan(p, true)
				}
			}
		case mask&unix.IN_DELETE != 0:
			delete(w.dirty, p)
			w.emit(watchEvent{Op: "remove", Path: p, Dir: isDir})
		case mask&unix.IN_MODIFY != 0:
			// The first write since the file was last closed is reported
			// at once; later ones only by the close (below).
			if n := w.dirty[p]; n == 0 {
				if len(w.dirty) >= maxDirty {
					clear(w.dirty)
				}
				w.emit(watchEvent{Op: "modify", Path: p})
			}
			w.dirty[p]++
		case mask&unix.IN_CLOSE_WRITE != 0:
			if w.dirty[p] > 1 {
				w.emit(watchEvent{Op: "modify", Path: p})
			}
			delete(w.dirty, p)
		case mask&unix.IN_MOVED_FROM != 0:
			if _, ok := w.moves[ev.Cookie]; !ok {
				if len(w.order) >= maxWatches {
					w.flushMoves()
				}
				w.order = append(w.order, ev.Cookie)
			}
			w.moves[ev.Cookie] = move{p, isDir}
		case mask&unix.IN_MOVED_TO != 0:
			if m, ok := w.moves[ev.Cookie]; ok {
				delete(w.moves, ev.Cookie)
				w.emit(watchEvent{Op: "rename", Path: p, Old: m.path, Dir: isDir})
				if isDir && w.recursive {
					w.rebase(m.path, p)
				}
				continue
			}
			w.emit(watchEvent{Op: "create", Path: p, Dir: isDir})
			if isDir && w.recursive {
				if _, err := w.add(p); err == nil {
					w.scan(p, true)
				}
			}
		}
	}
	if gone {
		w.flushMoves()
	}
	return gone
}

// flushMoves reports the moves whose other half never came: they left
// the watched tree.
func (w *watcher) flushMoves() {
	for _, c := range w.order {
		m, ok := w.moves[c]
		if !ok {
			continue
		}
		w.emit(watchEvent{Op: "remove", Path: m.path, Dir: m.dir})
		if m.dir {
			w.forget(m.path)
		}
	}
	clear(w.moves)
	w.order = w.order[:0]
}

// rebase renames the watched directories at and beneath old to new.
func (w *watcher) rebase(old, new string) {
	for wd, d := range w.dirs {
		if d == old {
			w.dirs[wd] = new
		} else if rest, ok := strings.CutPrefix(d, old+"/"); ok {
			w.dirs[wd] = path.Join(new, rest)
		}
	}
}

// forget stops watching the directories at and beneath p (moved away).
func (w *watcher) forget(p string) {
	for wd, d := range w.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.dirs, wd)
		}
	}
}
