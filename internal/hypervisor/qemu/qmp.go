package qemu

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/unixsock"
)

// QMP is one connection to a VM's QEMU Machine Protocol socket.
type QMP struct {
	conn net.Conn
	r    *bufio.Reader
}

// DialQMP connects to the socket at path and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	var conn net.Conn
	err := unixsock.Path(path, func(p string) (err error) {
		conn, err = d.DialContext(ctx, "unix", p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	q := &QMP{conn: conn, r: bufio.NewReader(conn)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		conn.Close()
		return nil, fmt.Errorf("qmp: greeting: %w", err)
	}
	if _, err := q.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Execute runs one command and returns its "return" value; asynchronous
// events that arrive first are skipped.
func (q *QMP) Execute(cmd string, args any) (json.RawMessage, error) {
	return q.call(cmd, args, nil)
}

// call runs one command, passing oob (file descriptors) with it.
func (q *QMP) call(cmd string, args any, oob []byte) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if oob != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: file descriptors need a UNIX socket", cmd)
		}
		_, _, err = uc.WriteMsgUnix(append(b, '\n'), oob, nil)
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		}
		return resp.Return, nil
	}
}

// HumanCommand runs a monitor (HMP) command through QMP and returns its
// text output, which is where HMP reports failures.
func (q *QMP) HumanCommand(cmdline string) (string, error) {
	ret, err := q.Execute("human-monitor-command", map[string]string{"command-line": cmdline})
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(ret, &out); err != nil {
		return "", fmt.Errorf("qemu monitor: %s: %w", cmdline, err)
	}
	return strings.TrimSpace(out), nil
}

// AddHostForward adds a user-mode TCP forward to a running VM. Success is
// silent; any output is an error message.
func (q *QMP) AddHostForward(f HostForward) error {
	cmd := fmt.Sprintf("hostfwd_add net0 tcp:%s:%d-:%d", f.HostAddr, f.HostPort, f.GuestPort)
	out, err := q.HumanCommand(cmd)
	if err == nil && out != "" {
		err = fmt.Errorf("qemu monitor: %s: %s", cmd, out)
	}
	return err
}

// RemoveHostForward removes a user-mode TCP forward from a running VM.
func (q *QMP) RemoveHostForward(hostAddr string, hostPort int) error {
	cmd := fmt.Sprintf("hostfwd_remove net0 tcp:%s:%d", hostAddr, hostPort)
	out, err := q.HumanCommand(cmd)
	if err == nil && !strings.Contains(out, "removed") {
		err = fmt.Errorf("qemu monitor: %s: %s", cmd, out)
	}
	return err
}

// HostForward is a user-mode forward as QMP takes it.
type HostForward struct {
	HostAddr  string
	HostPort  int
	GuestPort int
}

// ConsoleToRing moves the character device id (the serial console) to a
// ring buffer of size bytes (a power of two) in QEMU's memory: what the
// guest writes from then on costs the host no disk, and when nobody reads
// it the oldest bytes give way.
func (q *QMP) ConsoleToRing(id string, size int) error {
	_, err := q.Execute("chardev-change", map[string]any{
		"id":      id,
		"backend": map[string]any{"type": "ringbuf", "data": map[string]any{"size": size}},
	})
	return err
}

// ReadRing takes up to max bytes out of the ring buffer character device
// id; it returns nothing when the ring is empty.
func (q *QMP) ReadRing(id string, max int) ([]byte, error) {
	ret, err := q.Execute("ringbuf-read", map[string]any{"device": id, "size": max, "format": "base64"})
	if err != nil {
		return nil, err
	}
	var s string
	if err := json.Unmarshal(ret, &s); err != nil {
		return nil, fmt.Errorf("qmp ringbuf-read: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("qmp ringbuf-read: %w", err)
	}
	return b, nil
}

// ConsoleChardev is the id of the serial console's character device.
const ConsoleChardev = "console"
