package agent

import (
	"encoding/json"
	"errors"
	"io"
)

// maxProcRequest bounds one smolvm-proc request (a start's argv, or a
// stdin write of maxStdinWrite bytes in base64).
const maxProcRequest = 2 << 20

// procRequest is the one JSON object a client writes on a "smolvm-proc"
// subsystem channel before closing its side.
type procRequest struct {
	// Op is start, list, get, signal, wait, stdin or attach.
	Op   string    `json:"op"`
	ID   string    `json:"id,omitempty"`
	Spec *argvSpec `json:"spec,omitempty"` // start
	// KeepStdin (start) gives the process a stdin pipe for "stdin" ops.
	KeepStdin bool   `json:"keep_stdin,omitempty"`
	Signal    string `json:"signal,omitempty"` // signal
	Data      []byte `json:"data,omitempty"`   // stdin
	Close     bool   `json:"close,omitempty"`  // stdin: close it after Data
	// Offset (attach) is where in the output to start: 0 replays all that
	// is kept. Follow goes on with live output until the process exits.
	Offset int64 `json:"offset,omitempty"`
	Follow bool  `json:"follow,omitempty"`
}

// procReply is one JSON line the agent writes back: a request's answer,
// or an attach's frames, which end with Proc (or Error).
type procReply struct {
	Proc  *procInfo  `json:"proc,omitempty"`
	Procs []procInfo `json:"procs,omitempty"`
	Error *cmdError  `json:"error,omitempty"`
	// Attach frames: output of Stream ("stdout", "stderr") at Offset, or
	// Dropped bytes the buffer no longer had.
	Stream  string `json:"stream,omitempty"`
	Data    []byte `json:"data,omitempty"`
	Offset  int64  `json:"offset,omitempty"`
	Dropped int64  `json:"dropped,omitempty"`
}

// startProc serves one smolvm-proc request on the session's channel.
func (s *session) startProc() (func(), error) {
	return func() {
		s.wg.Go(func() {
			code := uint32(0)
			if err := s.serveProc(); err != nil {
				ce := asCmdError(err)
				_ = json.NewEncoder(s.ch).Encode(procReply{Error: ce})
				code = 1
			}
			s.sendExitStatus(code)
			_ = s.ch.Close()
		})
	}, nil
}

func (s *session) serveProc() error {
	raw, err := io.ReadAll(io.LimitReader(s.ch, maxProcRequest+1))
	if err != nil {
		return err
	}
	if len(raw) > maxProcRequest {
		return errKind("invalid", "request of more than %d bytes", maxProcRequest)
	}
	var req procRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return errKind("invalid", "malformed request: %v", err)
	}
	t := s.srv.procs
	enc := json.NewEncoder(s.ch)
	reply := func(r procReply) error { return enc.Encode(r) }
	if req.Op == "list" {
		return reply(procReply{Procs: t.list()})
	}
	if req.Op == "start" {
		if req.Spec == nil {
			return errKind("invalid", "start without a command")
		}
		p, err := t.start(req.Spec, req.KeepStdin)
		if err != nil {
			return err
		}
		in := p.info()
		return reply(procReply{Proc: &in})
	}
	p, err := t.get(req.ID)
	if err != nil {
		return err
	}
	switch req.Op {
	case "get":
	case "signal":
		sig, err := parseSignal(req.Signal)
		if err != nil {
			return err
		}
		if err := p.signal(sig); err != nil {
			return err
		}
	case "stdin":
		if len(req.Data) > maxStdinWrite {
			return errKind("invalid", "stdin write of %d bytes; at most %d at a time", len(req.Data), maxStdinWrite)
		}
		if err := p.writeStdin(req.Data, req.Close); err != nil {
			return err
		}
	case "wait":
		if err := s.follow(p, -1, false, enc); err != nil {
			return err
		}
	case "attach":
		if err := s.follow(p, req.Offset, req.Follow, enc); err != nil {
			return err
		}
	default:
		return errKind("invalid", "unknown op %q", req.Op)
	}
	in := p.info()
	return reply(procReply{Proc: &in})
}

var errSessionGone = errors.New("session closed")

// follow writes p's output from offset off as frames (none if off < 0),
// and with follow (or off < 0: wait) keeps on until p has exited and its
// output is all in. A client that stops reading only blocks this session:
// the process writes into its ring whatever happens here.
func (s *session) follow(p *bgProc, off int64, follow bool, enc *json.Encoder) error {
	wait := off < 0
	for {
		p.mu.Lock()
		var chunks []chunk
		var dropped int64
		if !wait {
			chunks, dropped = p.ring.from(off)
			off = max(off, p.ring.total) // an offset past the end waits for it
		}
		finished := p.done()
		changed := p.changed
		p.mu.Unlock()
		if dropped > 0 {
			if err := enc.Encode(procReply{Dropped: dropped}); err != nil {
				return err
			}
		}
		for _, c := range chunks {
			stream := "stdout"
			if c.stream == 'e' {
				stream = "stderr"
			}
			if err := enc.Encode(procReply{Stream: stream, Data: c.data, Offset: c.off}); err != nil {
				return err
			}
		}
		if finished || (!follow && !wait) {
			return nil
		}
		select {
		case <-changed:
		case <-s.gone:
			return errSessionGone
		}
	}
}
