package server

import (
	"bytes"
	"net/http"
	"sync"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
)

// buildImage is POST /v1/images: NDJSON progress events while the image
// builds, then its result or the error. A bad request is refused with an
// error status before the stream starts.
func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) {
	var req api.BuildImage
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	if err := image.ValidateName(req.Name); err != nil {
		writeError(w, r, &apiError{code: api.CodeInvalid, field: "name", msg: err.Error(), err: err})
		return
	}
	if req.From == "" {
		writeError(w, r, invalid("from", "from is empty: alpine[:VERSION], debian[:SUITE], oci:REF, dir:PATH or tar:PATH"))
		return
	}
	ev := newEventWriter(w)
	w.Header().Set("Content-Type", api.NDJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	ev.flush()
	b := s.builder()
	progress := &lineEvents{ev: ev}
	b.Progress = progress
	img, err := b.Build(r.Context(), req.Name, image.BuildOptions{
		From: req.From, SizeMiB: req.SizeMiB, Password: req.Password, AuthorizedKeys: req.AuthorizedKeys,
		Packages: req.Packages, Mirror: req.Mirror, SHA256: req.SHA256, Insecure: req.Insecure, Force: req.Force,
	})
	progress.flush()
	if err != nil {
		d := detail(err)
		ev.send(api.Event{Type: "error", Error: &d})
		return
	}
	ev.send(api.Event{Type: "result", Image: img})
}

// lineEvents turns each line written to it (progress is written as
// lines, or as bars redrawn with \r) into a progress event.
type lineEvents struct {
	mu  sync.Mutex
	ev  *eventWriter
	buf []byte
}

func (l *lineEvents) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexAny(l.buf, "\r\n")
		if i < 0 {
			break
		}
		if line := bytes.TrimSpace(l.buf[:i]); len(line) > 0 {
			l.ev.send(api.Event{Type: "progress", Message: string(line)})
		}
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 {
		l.buf = l.buf[:0] // no line that long is progress worth sending
	}
	return len(p), nil
}

func (l *lineEvents) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if line := bytes.TrimSpace(l.buf); len(line) > 0 {
		l.ev.send(api.Event{Type: "progress", Message: string(line)})
	}
	l.buf = nil
}
