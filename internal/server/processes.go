package server

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request) {
	var req api.StartProcess
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	if (len(req.Argv) == 0) == (strings.TrimSpace(req.Cmd) == "") {
		writeError(w, r, invalid("argv", "give argv (run without a shell) or cmd (a shell command line), one of them"))
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		p, err := vm.StartProcess(r.Context(), smolvm.ProcessSpec{
			Args: req.Argv, Shell: req.Cmd, Dir: req.Dir, User: req.User, Env: req.Env, StdinPipe: req.Stdin,
		})
		if err != nil {
			return err
		}
		in, err := p.Info(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, in)
		return nil
	})
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		list, err := vm.Processes(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.ProcessList{Processes: list})
		return nil
	})
}

// withProcess runs fn on the handle of the path's process.
func (s *Server) withProcess(w http.ResponseWriter, r *http.Request, fn func(*smolvm.Process) error) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		p, err := vm.Process(r.Context(), r.PathValue("pid"))
		if err != nil {
			return err
		}
		return fn(p)
	})
}

func (s *Server) getProcess(w http.ResponseWriter, r *http.Request) {
	s.withProcess(w, r, func(p *smolvm.Process) error {
		in, err := p.Info(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, in)
		return nil
	})
}

func (s *Server) signalProcess(w http.ResponseWriter, r *http.Request) {
	var req api.Signal
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Signal == "" {
		req.Signal = "TERM"
	}
	s.withProcess(w, r, func(p *smolvm.Process) error {
		if err := p.Signal(r.Context(), req.Signal); err != nil {
			return err
		}
		in, err := p.Info(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, in)
		return nil
	})
}

func (s *Server) waitProcess(w http.ResponseWriter, r *http.Request) {
	s.withProcess(w, r, func(p *smolvm.Process) error {
		if _, err := p.Wait(r.Context()); err != nil {
			return err
		}
		in, err := p.Info(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, in)
		return nil
	})
}

func (s *Server) processStdin(w http.ResponseWriter, r *http.Request) {
	var req api.ProcessStdin
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	data := []byte(req.Data)
	if req.DataB64 != "" {
		if req.Data != "" {
			writeError(w, r, invalid("data_b64", "give data or data_b64, not both"))
			return
		}
		b, err := base64.StdEncoding.DecodeString(req.DataB64)
		if err != nil {
			writeError(w, r, invalid("data_b64", "data_b64 is not standard base64: %v", err))
			return
		}
		data = b
	}
	s.withProcess(w, r, func(p *smolvm.Process) error {
		if len(data) > 0 {
			if err := p.Write(r.Context(), data); err != nil {
				return err
			}
		}
		if req.Close {
			if err := p.CloseStdin(r.Context()); err != nil {
				return err
			}
		}
		in, err := p.Info(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, in)
		return nil
	})
}

// attachProcess streams the process's kept output and, with follow, its
// live output until it exits, as NDJSON ProcessEvents.
func (s *Server) attachProcess(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var o smolvm.AttachOptions
	if v := q.Get("offset"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, r, invalid("offset", "offset=%q: want a byte offset >= 0 in the process's output", v))
			return
		}
		o.Offset = n
	}
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, r, invalid("follow", "follow=%q: use true or false", v))
			return
		}
		o.Follow = b
	}
	s.withProcess(w, r, func(p *smolvm.Process) error {
		var mu sync.Mutex
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		send := func(ev api.ProcessEvent) error {
			mu.Lock()
			defer mu.Unlock()
			if err := enc.Encode(ev); err != nil {
				return err
			}
			return rc.Flush()
		}
		w.Header().Set("Content-Type", api.NDJSON)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		data := func(typ string) writerFunc {
			return func(b []byte) (int, error) {
				if err := send(api.ProcessEvent{Type: typ, DataB64: base64.StdEncoding.EncodeToString(b)}); err != nil {
					return 0, err
				}
				return len(b), nil
			}
		}
		o.Dropped = func(n int64) { _ = send(api.ProcessEvent{Type: "dropped", Dropped: n}) }
		in, err := p.Attach(r.Context(), data("stdout"), data("stderr"), o)
		if err != nil {
			d := detail(err)
			_ = send(api.ProcessEvent{Type: "error", Error: &d})
			return nil
		}
		_ = send(api.ProcessEvent{Type: "end", Process: in})
		return nil
	})
}

// validSignal reports whether name (without SIG) is a Linux signal the
// exec WebSocket passes on.
func validSignal(name string) bool {
	switch name {
	case "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
		"PIPE", "ALRM", "TERM", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU",
		"XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS":
		return true
	}
	return false
}
