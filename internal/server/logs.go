package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/smolvm/smolvm"
)

// logPoll is how often a followed console log is checked for more.
const logPoll = 200 * time.Millisecond

// logs is GET /v1/vms/{id}/logs?follow=&tail=N: the console log as
// text/plain (both files, at most 2 * smolvm.ConsoleLogMax), the last N
// lines with tail, and with follow what is added after, flushed as it
// comes, until the client goes or the VM stops.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	follow := false
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, r, invalid("follow", "follow=%q: use true or false", v))
			return
		}
		follow = b
	}
	tail := -1
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, r, invalid("tail", "tail=%q: want a number of lines, 0 or more", v))
			return
		}
		tail = n
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		ctx := r.Context()
		files, err := vm.ConsoleLogs(ctx)
		if err != nil {
			return err
		}
		current := vm.Info().ConsoleLog
		older := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == current })
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
		var cur *os.File
		if f, err := os.Open(current); err == nil {
			cur = f
			defer cur.Close()
		}
		if tail >= 0 {
			// Bounded: the files hold at most 2 * ConsoleLogMax.
			var buf bytes.Buffer
			copyFiles(&buf, older)
			if cur != nil {
				io.Copy(&buf, cur)
			}
			fw.Write(lastLines(buf.Bytes(), tail))
		} else {
			copyFiles(fw, older)
			if cur != nil {
				io.Copy(fw, cur)
			}
		}
		fw.flush()
		if follow {
			followLog(ctx, vm, current, cur, fw)
		}
		return nil
	})
}

// lastLines is the last n lines of b.
func lastLines(b []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			if n--; n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}

func copyFiles(w io.Writer, files []string) {
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			continue // rotated away meanwhile
		}
		io.Copy(w, f)
		f.Close()
	}
}

// followLog copies the log at path to w as it grows, going on with the new
// file when it is rotated or the VM restarts, until ctx ends or the VM is
// no longer running. f is the file already read up to now (nil if none).
func followLog(ctx context.Context, vm *smolvm.VM, path string, f *os.File, w *flushWriter) {
	tick := time.NewTicker(logPoll)
	defer tick.Stop()
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Moves the guest's latest output into the file.
		if _, err := vm.ConsoleLogs(ctx); err != nil {
			return
		}
		if fi, err := os.Stat(path); err == nil {
			if f != nil {
				if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
					io.Copy(w, f) // the rest of the old file
					f.Close()
					f = nil
				}
			}
			if f == nil {
				if f, err = os.Open(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return
				}
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return
			}
		}
		if w.flush() != nil {
			return
		}
		if i%5 == 0 {
			if vm.Refresh(ctx) != nil || vm.Status() != smolvm.StateRunning {
				if f != nil {
					io.Copy(w, f)
					w.flush()
				}
				return
			}
		}
	}
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f *flushWriter) flush() error                { return f.rc.Flush() }
