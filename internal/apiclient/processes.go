package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// StartProcess starts a background process in VM id.
func (c *Client) StartProcess(ctx context.Context, id string, req api.StartProcess) (smolvm.ProcessInfo, error) {
	var in smolvm.ProcessInfo
	err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/processes", nil, req, &in)
	return in, err
}

// Processes lists VM id's background processes.
func (c *Client) Processes(ctx context.Context, id string) ([]smolvm.ProcessInfo, error) {
	var l api.ProcessList
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/processes", nil, nil, &l)
	return l.Processes, err
}

func procPath(id, pid string) string { return "/vms/" + esc(id) + "/processes/" + esc(pid) }

// Process returns one background process's record.
func (c *Client) Process(ctx context.Context, id, pid string) (smolvm.ProcessInfo, error) {
	var in smolvm.ProcessInfo
	err := c.call(ctx, http.MethodGet, procPath(id, pid), nil, nil, &in)
	return in, err
}

// SignalProcess sends sig (a name or number; empty = TERM).
func (c *Client) SignalProcess(ctx context.Context, id, pid, sig string) (smolvm.ProcessInfo, error) {
	var in smolvm.ProcessInfo
	err := c.call(ctx, http.MethodPost, procPath(id, pid)+"/signal", nil, api.Signal{Signal: sig}, &in)
	return in, err
}

// WaitProcess waits until the process has exited.
func (c *Client) WaitProcess(ctx context.Context, id, pid string) (smolvm.ProcessInfo, error) {
	var in smolvm.ProcessInfo
	err := c.call(ctx, http.MethodPost, procPath(id, pid)+"/wait", nil, nil, &in)
	return in, err
}

// ProcessStdin writes data to the process's stdin, then closes it if
// closeIt.
func (c *Client) ProcessStdin(ctx context.Context, id, pid string, data []byte, closeIt bool) (smolvm.ProcessInfo, error) {
	var in smolvm.ProcessInfo
	req := api.ProcessStdin{Close: closeIt}
	if len(data) > 0 {
		req.DataB64 = base64.StdEncoding.EncodeToString(data)
	}
	err := c.call(ctx, http.MethodPost, procPath(id, pid)+"/stdin", nil, req, &in)
	return in, err
}

// AttachProcess copies the process's output to stdout and stderr as
// smolvm.Process.Attach does, over the NDJSON attach stream.
func (c *Client) AttachProcess(ctx context.Context, id, pid string, stdout, stderr io.Writer, o smolvm.AttachOptions) (smolvm.ProcessInfo, error) {
	q := url.Values{"follow": {strconv.FormatBool(o.Follow)}}
	if o.Offset > 0 {
		q.Set("offset", strconv.FormatInt(o.Offset, 10))
	}
	resp, err := c.send(ctx, request{method: http.MethodGet, path: procPath(id, pid) + "/attach", query: q})
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	defer resp.Body.Close()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev api.ProcessEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return smolvm.ProcessInfo{}, fmt.Errorf("smolvm server at %s: bad attach event %.80q: %w", c.host, line, err)
		}
		switch ev.Type {
		case "stdout", "stderr":
			b, err := base64.StdEncoding.DecodeString(ev.DataB64)
			if err != nil {
				return smolvm.ProcessInfo{}, fmt.Errorf("smolvm server at %s: bad attach data: %w", c.host, err)
			}
			w := stdout
			if ev.Type == "stderr" {
				w = stderr
			}
			if _, err := w.Write(b); err != nil {
				return smolvm.ProcessInfo{}, err
			}
		case "dropped":
			if o.Dropped != nil {
				o.Dropped(ev.Dropped)
			}
		case "end":
			if ev.Process == nil {
				return smolvm.ProcessInfo{}, fmt.Errorf("smolvm server at %s: attach ended without the process", c.host)
			}
			return *ev.Process, nil
		case "error":
			return smolvm.ProcessInfo{}, eventError(resp.StatusCode, api.Event{Type: "error", Error: ev.Error})
		}
	}
	err = sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return smolvm.ProcessInfo{}, c.streamError(ctx, err)
}
