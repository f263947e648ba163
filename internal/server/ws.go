package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// wsReadLimit bounds one message from the client: an Exec or a stdin chunk.
const wsReadLimit = 1 << 20

// wsStdinQueue is how many stdin messages wait for a command that does not
// read them before the server stops reading the socket (backpressure).
const wsStdinQueue = 16

// execWS is GET /v1/vms/{id}/exec/ws: the first message is an api.Exec,
// then stdin, eof, resize and signal events come in and stdout, stderr
// and the exit (or error) go out; see api.Event.
func (s *Server) execWS(w http.ResponseWriter, r *http.Request) {
	vm, release, err := s.vm(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer release()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the request
	}
	defer c.CloseNow()
	c.SetReadLimit(wsReadLimit)
	ctx := r.Context()

	first, cancel := context.WithTimeout(ctx, 30*time.Second)
	typ, data, err := c.Read(first)
	cancel()
	if err != nil {
		return
	}
	var req api.Exec
	if typ != websocket.MessageText {
		err = invalid("", "the first message is the Exec request, as JSON text")
	} else {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if derr := dec.Decode(&req); derr != nil {
			err = jsonError(derr)
		}
	}
	var opts []smolvm.RunOption
	if err == nil {
		opts, err = execOptions(req, false)
	}
	if err == nil && req.TTY {
		err = checkSize(req.Width, req.Height)
	}
	if err != nil {
		wsFail(ctx, c, err)
		return
	}
	var o smolvm.ExecOptions
	for _, opt := range opts {
		opt(&o)
	}
	signals := make(chan string, wsSignalQueue)
	o.Signals = signals
	s.runWS(ctx, c, vm, signals, func(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, resize <-chan [2]int) (int, error) {
		o.Stdin, o.Stdout, o.Stderr = stdin, stdout, stderr
		if req.TTY {
			return vm.ExecTerminal(ctx, req.Cmd, o, smolvm.Terminal{Term: req.Term, Width: req.Width, Height: req.Height, Resize: resize})
		}
		return execAny(ctx, vm, req, o)
	})
}

// shellWS is GET /v1/vms/{id}/shell/ws?term=&width=&height=: a login
// shell on a pseudo-terminal, with the events of the exec WebSocket.
func (s *Server) shellWS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	size := [2]int{}
	for i, k := range []string{"width", "height"} {
		if v := q.Get(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				writeError(w, r, invalid(k, "%s=%q: want a number of cells", k, v))
				return
			}
			size[i] = n
		}
	}
	if err := checkSize(size[0], size[1]); err != nil {
		writeError(w, r, err)
		return
	}
	term := q.Get("term")
	if term == "" {
		term = "xterm"
	}
	if size[0] == 0 {
		size[0] = 80
	}
	if size[1] == 0 {
		size[1] = 24
	}
	vm, release, err := s.vm(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer release()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(wsReadLimit)
	s.runWS(r.Context(), c, vm, nil, func(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, resize <-chan [2]int) (int, error) {
		return vm.Shell(ctx, stdin, stdout, stderr, term, size[0], size[1], resize)
	})
}

func checkSize(w, h int) error {
	if w < 0 || h < 0 || w > 1<<15 || h > 1<<15 {
		return invalid("width", "terminal size %dx%d: want 0 (the default, 80x24) up to 32768 cells each way", w, h)
	}
	return nil
}

// wsFail sends err as the last event and closes the socket.
func wsFail(ctx context.Context, c *websocket.Conn, err error) {
	d := detail(err)
	wsSend(ctx, c, api.Event{Type: "error", Error: &d})
	c.Close(websocket.StatusNormalClosure, d.Code)
}

func wsSend(ctx context.Context, c *websocket.Conn, ev api.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, b)
}

type wsRun func(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, resize <-chan [2]int) (int, error)

// wsSignalQueue is how many signals may wait for the guest; more are
// dropped (a client repeating INT needs no more than that).
const wsSignalQueue = 8

// runWS runs a command with its stdin, resizes and signals from the socket
// and its output to it. A signal goes to the command's process group in
// the guest (on signals); where the command takes none (the shell), it
// ends the command. The client closing the socket ends it too.
func (s *Server) runWS(ctx context.Context, c *websocket.Conn, vm *smolvm.VM, signals chan<- string, run wsRun) {
	// The command runs under cmdCtx, which a signal or the client going
	// away ends; the socket is read and written under ctx, since
	// coder/websocket closes a connection whose Read or Write context ends
	// mid-call, and the last event must still go out.
	cmdCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdinR, stdinW := io.Pipe()
	defer stdinR.Close()
	chunks := make(chan []byte, wsStdinQueue)
	resize := make(chan [2]int, 1)
	clientErr := make(chan error, 1)

	// Feed stdin from the queue, so that reading the socket (for resizes,
	// signals, the close) goes on while the command is not reading.
	go func() {
		for b := range chunks {
			if _, err := stdinW.Write(b); err != nil {
				break
			}
		}
		stdinW.Close()
		for range chunks {
		}
	}()
	go func() {
		eof := false
		defer func() {
			if !eof {
				close(chunks)
			}
		}()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				cancel() // the client went away: end the command
				return
			}
			var ev api.Event
			if typ == websocket.MessageBinary {
				if len(data) == 0 || data[0] != 0 {
					clientErr <- invalid("", "a binary message from the client starts with byte 0 (stdin)")
					cancel()
					return
				}
				ev = api.Event{Type: "stdin"}
				data = data[1:]
			} else {
				if err := json.Unmarshal(data, &ev); err != nil {
					clientErr <- invalid("", "bad event: %v", err)
					cancel()
					return
				}
				if ev.Type == "stdin" {
					if data, err = base64.StdEncoding.DecodeString(ev.DataB64); err != nil {
						clientErr <- invalid("data_b64", "stdin data_b64 is not standard base64: %v", err)
						cancel()
						return
					}
				}
			}
			switch ev.Type {
			case "stdin":
				if eof {
					continue
				}
				select {
				case chunks <- data:
				case <-cmdCtx.Done():
					return
				}
			case "eof":
				if !eof {
					eof = true
					// Closing the queue ends stdin once it is drained;
					// keep reading for resizes and signals.
					close(chunks)
				}
			case "resize":
				if checkSize(ev.Width, ev.Height) != nil || ev.Width == 0 || ev.Height == 0 {
					continue
				}
				select { // keep only the latest size
				case <-resize:
				default:
				}
				resize <- [2]int{ev.Width, ev.Height}
			case "signal":
				if signals == nil {
					clientErr <- &apiError{code: api.CodeCanceled, msg: "ended by signal " + ev.Signal + " from the client"}
					cancel()
					return
				}
				name := strings.TrimPrefix(strings.ToUpper(ev.Signal), "SIG")
				if !validSignal(name) {
					clientErr <- invalid("signal", "signal %q: send a name such as TERM, INT, HUP or KILL", ev.Signal)
					cancel()
					return
				}
				select {
				case signals <- name:
				default:
				}
			default:
				clientErr <- invalid("type", "event type %q: send stdin, eof, resize or signal", ev.Type)
				cancel()
				return
			}
		}
	}()

	out := func(typ string) io.Writer {
		return writerFunc(func(p []byte) (int, error) {
			if err := wsSend(ctx, c, api.Event{Type: typ, DataB64: base64.StdEncoding.EncodeToString(p)}); err != nil {
				return 0, err
			}
			return len(p), nil
		})
	}
	code, err := run(cmdCtx, stdinR, out("stdout"), out("stderr"), resize)
	select {
	case cerr := <-clientErr:
		err = cerr
	default:
	}
	if err != nil {
		s.dropIfGone(vm, err)
		wsFail(context.WithoutCancel(ctx), c, err)
		return
	}
	wsSend(ctx, c, api.Event{Type: "exit", ExitCode: &code})
	c.Close(websocket.StatusNormalClosure, "")
}
