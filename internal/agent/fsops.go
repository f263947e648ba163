package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// The smolvm-fs subsystem: one JSON request on stdin (read to EOF), one
// JSON reply on stdout, exit status 0 whether or not the operation
// succeeded (the reply says). Failures carry the errno's name, so the host
// can tell "no such file" from "is a directory" without parsing text.
const (
	// maxFSRequest bounds what a smolvm-fs client may make us buffer.
	maxFSRequest = 64 << 10
	// defaultFSListMax is how many entries a listing returns when the
	// request names no maximum.
	defaultFSListMax = 100_000
)

// fsRequest is the smolvm-fs request; see internal/guest's fsRequest.
type fsRequest struct {
	Op        string `json:"op"` // stat, list, mkdir, remove, rename
	Path      string `json:"path"`
	To        string `json:"to,omitempty"`        // rename's new path
	Parents   bool   `json:"parents,omitempty"`   // mkdir -p
	Recursive bool   `json:"recursive,omitempty"` // remove a tree
	Perm      uint32 `json:"perm,omitempty"`      // mkdir's mode; 0 = 0755
	Max       int    `json:"max,omitempty"`       // list: most entries; 0 = defaultFSListMax
}

// fsEntry describes one file, as lstat sees it.
type fsEntry struct {
	Name    string `json:"name"`
	Type    string `json:"type"` // file, dir, symlink, fifo, socket, device, chardev
	Size    int64  `json:"size"`
	Perm    uint32 `json:"perm"`
	ModTime int64  `json:"mtime_ns"`
	Target  string `json:"target,omitempty"`
}

type fsError struct {
	Errno   string `json:"errno,omitempty"`
	Message string `json:"message"`
}

type fsReply struct {
	Entry   *fsEntry  `json:"entry,omitempty"`
	Entries []fsEntry `json:"entries,omitempty"`
	Error   *fsError  `json:"error,omitempty"`
}

// startFS serves the smolvm-fs subsystem.
func (s *session) startFS() (func(), error) {
	return func() {
		s.wg.Go(func() {
			reply := serveFS(s.ch)
			data, _ := json.Marshal(reply)
			_, _ = s.ch.Write(append(data, '\n'))
			s.sendExitStatus(0)
			_ = s.ch.Close()
		})
	}, nil
}

func serveFS(r io.Reader) fsReply {
	data, err := io.ReadAll(io.LimitReader(r, maxFSRequest+1))
	if err != nil {
		return fsFail(fmt.Errorf("read request: %w", err))
	}
	if len(data) > maxFSRequest {
		return fsFail(fmt.Errorf("request larger than %d bytes", maxFSRequest))
	}
	var req fsRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return fsFail(fmt.Errorf("parse request: %w", err))
	}
	if !filepath.IsAbs(req.Path) || (req.Op == "rename" && !filepath.IsAbs(req.To)) {
		return fsFail(fmt.Errorf("%w: paths must be absolute", unix.EINVAL))
	}
	switch req.Op {
	case "stat":
		e, err := lstatEntry(req.Path)
		if err != nil {
			return fsFail(err)
		}
		return fsReply{Entry: &e}
	case "list":
		ents, err := listDir(req.Path, req.Max)
		if err != nil {
			return fsFail(err)
		}
		return fsReply{Entries: ents}
	case "mkdir":
		perm := fs.FileMode(req.Perm).Perm()
		if perm == 0 {
			perm = 0o755
		}
		if req.Parents {
			err = os.MkdirAll(req.Path, perm)
		} else {
			err = os.Mkdir(req.Path, perm)
		}
	case "remove":
		if req.Recursive {
			// RemoveAll succeeds on a missing path; say so instead, as
			// rm -r does.
			if _, err = os.Lstat(req.Path); err == nil {
				err = os.RemoveAll(req.Path)
			}
		} else {
			err = os.Remove(req.Path)
			var pe *fs.PathError
			// os.Remove tries unlink then rmdir and reports the rmdir's
			// error for a directory that is not empty: say which.
			if errors.As(err, &pe) && errors.Is(pe.Err, unix.ENOTEMPTY) {
				err = &fs.PathError{Op: "remove", Path: req.Path, Err: unix.ENOTEMPTY}
			}
		}
	case "rename":
		err = os.Rename(req.Path, req.To)
	default:
		return fsFail(fmt.Errorf("%w: unknown op %q", unix.EINVAL, req.Op))
	}
	if err != nil {
		return fsFail(err)
	}
	return fsReply{}
}

func fsFail(err error) fsReply {
	e := &fsError{Message: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		e.Errno = unix.ErrnoName(errno)
	}
	return fsReply{Error: e}
}

func lstatEntry(p string) (fsEntry, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fsEntry{}, err
	}
	return entryOf(p, fi), nil
}

func entryOf(p string, fi fs.FileInfo) fsEntry {
	e := fsEntry{Name: fi.Name(), Type: fileType(fi.Mode()), Size: fi.Size(), Perm: uint32(fi.Mode().Perm()), ModTime: fi.ModTime().UnixNano()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		e.Target, _ = os.Readlink(p)
	}
	return e
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "chardev"
	}
	return "device"
}

// listDir lists dir, lstat'ing each entry, at most max entries (more is
// E2BIG, so a huge directory costs neither side its memory).
func listDir(dir string, max int) ([]fsEntry, error) {
	if max <= 0 {
		max = defaultFSListMax
	}
	// O_DIRECTORY: a FIFO at dir must fail, not block the open.
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents := []fsEntry{}
	for {
		names, err := f.Readdirnames(1024)
		for _, n := range names {
			if len(ents) >= max {
				return nil, &fs.PathError{Op: "list", Path: dir, Err: unix.E2BIG}
			}
			p := filepath.Join(dir, n)
			fi, err := os.Lstat(p)
			if err != nil {
				continue // gone since it was listed
			}
			ents = append(ents, entryOf(p, fi))
		}
		if errors.Is(err, io.EOF) {
			return ents, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
