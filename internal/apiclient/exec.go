package apiclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/smolvm/smolvm/internal/api"
)

// Exec runs a command and returns its whole result (buffered: up to
// req.OutputLimit of each stream). A non-zero exit is a result, not an
// error; a timeout is an error matching smolvm.ErrTimeout.
func (c *Client) Exec(ctx context.Context, id string, req api.Exec) (api.ExecResult, error) {
	var r api.ExecResult
	err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/exec", nil, req, &r)
	return r, err
}

// Stdio are a streamed command's input and outputs. Nil Stdin: the
// command reads an empty input. Resize, when not nil, carries new terminal
// sizes (width, height) of a TTY command.
type Stdio struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Resize <-chan [2]int
}

// ExecStream runs a command streaming its output to io.Stdout and
// io.Stderr as it comes, and its input from io.Stdin, and returns its exit
// code. Without stdin or a TTY it uses the NDJSON stream, else the exec
// WebSocket.
func (c *Client) ExecStream(ctx context.Context, id string, req api.Exec, stdio Stdio) (int, error) {
	if stdio.Stdin == nil && !req.TTY {
		return c.execNDJSON(ctx, id, req, stdio)
	}
	return c.session(ctx, "/vms/"+esc(id)+"/exec/ws", nil, &req, stdio)
}

// Shell runs the guest's interactive login shell on a PTY of width x
// height with terminal type term, over the shell WebSocket.
func (c *Client) Shell(ctx context.Context, id, term string, width, height int, stdio Stdio) (int, error) {
	q := url.Values{"term": {term}, "width": {strconv.Itoa(width)}, "height": {strconv.Itoa(height)}}
	return c.session(ctx, "/vms/"+esc(id)+"/shell/ws", q, nil, stdio)
}

func (c *Client) execNDJSON(ctx context.Context, id string, req api.Exec, stdio Stdio) (int, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return -1, err
	}
	resp, err := c.send(ctx, request{method: http.MethodPost, path: "/vms/" + esc(id) + "/exec",
		query: url.Values{"stream": {"true"}}, body: bytes.NewReader(b), ctype: "application/json"})
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	code := -1
	err = readEvents(resp.Body, func(ev api.Event) (bool, error) {
		return handleOutput(ev, stdio, resp.StatusCode, &code)
	})
	if err != nil {
		return -1, c.streamError(ctx, err)
	}
	return code, nil
}

// handleOutput applies one server event of an exec: output to its
// stream, or the end (exit or error).
func handleOutput(ev api.Event, stdio Stdio, status int, code *int) (last bool, err error) {
	switch ev.Type {
	case "stdout", "stderr":
		data, err := base64.StdEncoding.DecodeString(ev.DataB64)
		if err != nil {
			return true, fmt.Errorf("bad %s event: %w", ev.Type, err)
		}
		return false, writeOutput(ev.Type == "stderr", data, stdio)
	case "exit":
		if ev.ExitCode == nil {
			return true, errors.New("an exit event without an exit code")
		}
		*code = *ev.ExitCode
		return true, nil
	case "error":
		return true, eventError(status, ev)
	}
	return false, nil // unknown events are for newer clients
}

func writeOutput(stderr bool, data []byte, stdio Stdio) error {
	w := stdio.Stdout
	if stderr {
		w = stdio.Stderr
	}
	if w == nil {
		return nil
	}
	_, err := w.Write(data)
	return err
}

// stdinChunk is how much of stdin one message carries.
const stdinChunk = 32 << 10

// session runs one WebSocket exec or shell: first (for exec) the Exec
// message, then stdin and resizes in, output and the end out.
func (c *Client) session(ctx context.Context, path string, q url.Values, first *api.Exec, stdio Stdio) (int, error) {
	h := http.Header{}
	c.authorize(h)
	u := "ws" + strings.TrimPrefix(c.url(path, q), "http")
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return -1, c.responseError(resp)
		}
		return -1, c.transportError(ctx, err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxEventLine)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	send := func(ev any) error {
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		return conn.Write(ctx, websocket.MessageText, b)
	}
	if first != nil {
		if err := send(first); err != nil {
			return -1, c.streamError(ctx, err)
		}
	}
	if stdio.Stdin != nil {
		go pumpStdin(ctx, stdio.Stdin, send)
	} else if err := send(api.Event{Type: "eof"}); err != nil {
		return -1, c.streamError(ctx, err)
	}
	if stdio.Resize != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case sz, ok := <-stdio.Resize:
					if !ok {
						return
					}
					if send(api.Event{Type: "resize", Width: sz[0], Height: sz[1]}) != nil {
						return
					}
				}
			}
		}()
	}
	code := -1
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			return -1, c.streamError(ctx, fmt.Errorf("%w (%w)", io.ErrUnexpectedEOF, err))
		}
		var last bool
		if typ == websocket.MessageBinary {
			if len(msg) == 0 || msg[0] < 1 || msg[0] > 2 {
				continue
			}
			err = writeOutput(msg[0] == 2, msg[1:], stdio)
		} else {
			var ev api.Event
			if err := json.Unmarshal(msg, &ev); err != nil {
				return -1, c.streamError(ctx, fmt.Errorf("bad message %.80q: %w", msg, err))
			}
			last, err = handleOutput(ev, stdio, http.StatusOK, &code)
		}
		if err != nil {
			return -1, c.streamError(ctx, err)
		}
		if last {
			conn.Close(websocket.StatusNormalClosure, "")
			return code, nil
		}
	}
}

// pumpStdin sends r as stdin events, then eof. It ends with ctx; a read
// blocked on a terminal is left to the process's exit.
func pumpStdin(ctx context.Context, r io.Reader, send func(any) error) {
	buf := make([]byte, stdinChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if send(api.Event{Type: "stdin", DataB64: base64.StdEncoding.EncodeToString(buf[:n])}) != nil {
				return
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				send(api.Event{Type: "eof"})
			}
			return
		}
	}
}
