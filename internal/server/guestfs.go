package server

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// fileErrno names the errno of a failed file operation in d, and gives
// the failures that are the request's fault their code.
func fileErrno(err error, d *api.ErrorDetail) {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return
	}
	d.Errno = unix.ErrnoName(errno)
	if d.Code != api.CodeInternal {
		return
	}
	switch errno {
	case unix.EISDIR, unix.ENOTDIR, unix.ENOTEMPTY, unix.EINVAL, unix.ELOOP, unix.ENAMETOOLONG, unix.EXDEV, unix.EBUSY:
		d.Code = api.CodeInvalid
	}
}

// guestPath is the ?path= every file route takes.
func guestPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", invalid("path", "path is missing: give the guest path, ?path=/root")
	}
	return p, nil
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, invalid(name, "%s=%q: use true or false", name, v)
	}
	return b, nil
}

// statFile is GET /v1/vms/{id}/files/stat?path=P: a smolvm.FileInfo.
func (s *Server) statFile(w http.ResponseWriter, r *http.Request) {
	p, err := guestPath(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		fi, err := vm.FS().Stat(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, fi)
		return nil
	})
}

// listFiles is GET /v1/vms/{id}/files/list?path=P: the directory's
// entries, sorted by name.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	p, err := guestPath(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		ents, err := vm.FS().ReadDir(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.FileList{Entries: ents})
		return nil
	})
}

// mkdirFile is POST /v1/vms/{id}/files/mkdir {"path", "parents", "perm"}.
func (s *Server) mkdirFile(w http.ResponseWriter, r *http.Request) {
	var req api.Mkdir
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Perm > 0o777 {
		writeError(w, r, invalid("perm", "perm %#o: want permission bits, 0 to 0777 (0 = 0755)", req.Perm))
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		var err error
		if req.Parents {
			err = vm.FS().MkdirAll(r.Context(), req.Path, fs.FileMode(req.Perm))
		} else {
			err = vm.FS().Mkdir(r.Context(), req.Path, fs.FileMode(req.Perm))
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// deleteFiles is DELETE /v1/vms/{id}/files?path=P&recursive=true.
func (s *Server) deleteFiles(w http.ResponseWriter, r *http.Request) {
	p, err := guestPath(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	recursive, err := boolParam(r, "recursive")
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if recursive {
			err = vm.FS().RemoveAll(r.Context(), p)
		} else {
			err = vm.FS().Remove(r.Context(), p)
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// renameFile is POST /v1/vms/{id}/files/rename {"from", "to"}.
func (s *Server) renameFile(w http.ResponseWriter, r *http.Request) {
	var req api.Rename
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.FS().Rename(r.Context(), req.From, req.To); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// watchFiles is GET /v1/vms/{id}/files/watch?path=P&recursive=true: an
// NDJSON stream of api.WatchEvent, flushed per event, until the client
// goes or the directory does. A client slower than the guest loses
// events (reported as overflow), never the server's memory.
func (s *Server) watchFiles(w http.ResponseWriter, r *http.Request) {
	p, err := guestPath(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	recursive, err := boolParam(r, "recursive")
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		// The 200 goes once the guest watches: a client that changes
		// files after the headers arrive sees the change, and a watch
		// that cannot start (no such directory) is an error response.
		started := false
		err := vm.FS().Watch(r.Context(), p, smolvm.WatchOptions{Recursive: recursive, Ready: func() {
			started = true
			w.Header().Set("Content-Type", api.NDJSON)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
			rc.Flush()
		}}, func(e smolvm.WatchEvent) {
			if enc.Encode(api.WatchEvent{WatchEvent: e}) == nil {
				rc.Flush()
			}
		})
		if !started {
			return err
		}
		if err != nil && r.Context().Err() == nil {
			d := detail(err)
			enc.Encode(api.WatchEvent{WatchEvent: smolvm.WatchEvent{Op: "error", Message: d.Message}, Error: &d})
		}
		return nil
	})
}
