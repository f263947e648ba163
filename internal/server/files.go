package server

import (
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// DefaultMaxUpload is the largest upload (one file or a tar) a server
// takes unless Config.MaxUpload says otherwise.
const DefaultMaxUpload = 16 << 30

func (s *Server) maxUpload() int64 {
	if s.cfg.MaxUpload > 0 {
		return s.cfg.MaxUpload
	}
	return DefaultMaxUpload
}

// putFiles is PUT /v1/vms/{id}/files?path=P: the body is the file's bytes,
// or with Content-Type application/x-tar a tree unpacked into directory P.
// Both stream into the guest; nothing is held whole in memory.
func (s *Server) putFiles(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		writeError(w, r, invalid("path", "path is missing: give the guest path, ?path=/tmp/file"))
		return
	}
	mt := api.Binary
	if ct := r.Header.Get("Content-Type"); ct != "" {
		var err error
		if mt, _, err = mime.ParseMediaType(ct); err != nil || (mt != api.Binary && mt != api.Tar) {
			writeError(w, r, &apiError{code: api.CodeUnsupported, msg: fmt.Sprintf("Content-Type %q: send %s for a file or %s for a directory tree", ct, api.Binary, api.Tar)})
			return
		}
	}
	var mode fs.FileMode
	if v := r.Header.Get(api.FileModeHeader); v != "" {
		if mt == api.Tar {
			writeError(w, r, invalid("mode", "%s is for one file; a tar carries each entry's mode", api.FileModeHeader))
			return
		}
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil || m > 0o777 {
			writeError(w, r, invalid("mode", "%s %q: want octal permission bits, 0000 to 0777, such as 0644", api.FileModeHeader, v))
			return
		}
		mode = fs.FileMode(m)
	}
	archive, err := boolParam(r, "archive")
	if err != nil {
		writeError(w, r, err)
		return
	}
	if archive && mt != api.Tar {
		writeError(w, r, invalid("archive", "archive=true is for a tar (its entries carry their times); send one file as a tar of one entry into its directory"))
		return
	}
	if r.ContentLength > s.maxUpload() {
		writeError(w, r, &apiError{code: api.CodeTooLarge, msg: fmt.Sprintf("upload of %d bytes is over the server's limit of %d", r.ContentLength, s.maxUpload())})
		return
	}
	body := http.MaxBytesReader(w, r.Body, s.maxUpload())
	s.withVM(w, r, func(vm *smolvm.VM) error {
		var err error
		if mt == api.Tar {
			err = vm.WriteTreeWith(r.Context(), p, body, smolvm.CopyOptions{Archive: archive})
		} else {
			if mode == 0 {
				mode = 0o644
			}
			_, err = vm.WriteFile(r.Context(), p, body, mode)
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// getFiles is GET /v1/vms/{id}/files?path=P: a file's bytes, or a tar of
// a directory, streamed from the guest.
func (s *Server) getFiles(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		writeError(w, r, invalid("path", "path is missing: give the guest path, ?path=/etc/os-release"))
		return
	}
	archive, err := boolParam(r, "archive")
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		fi, err := vm.Stat(r.Context(), p)
		if err != nil {
			return err
		}
		lw := &lazyWriter{w: w}
		switch {
		case fi.IsDir():
			lw.contentType = api.Tar
			err = vm.ReadTreeWith(r.Context(), p, lw, smolvm.CopyOptions{Archive: archive})
		case fi.Mode().IsRegular():
			lw.contentType = api.Binary
			w.Header().Set(api.FileModeHeader, fmt.Sprintf("%04o", fi.Mode().Perm()))
			w.Header().Set(api.FileMtimeHeader, fi.ModTime().UTC().Format(time.RFC3339Nano))
			_, err = vm.ReadFile(r.Context(), p, lw)
		default:
			return invalid("path", "%s is a %v, neither a file nor a directory", p, fi.Mode().Type())
		}
		if err != nil && lw.started {
			// The status is sent: the only honest signal left is a stream
			// that breaks off, so that no client takes it for whole.
			s.log.Warn("download broke off", "vm", vm.ID(), "path", p, "err", err)
			panic(http.ErrAbortHandler)
		}
		if err == nil && !lw.started {
			lw.start() // an empty file
		}
		return err
	})
}

// lazyWriter sends the 200 with the first byte, so that an error before
// any is still an error response.
type lazyWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (l *lazyWriter) start() {
	l.started = true
	l.w.Header().Set("Content-Type", l.contentType)
	l.w.Header().Set("X-Content-Type-Options", "nosniff")
	l.w.WriteHeader(http.StatusOK)
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.start()
	}
	return l.w.Write(p)
}
