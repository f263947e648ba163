package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
)

// CreateVM makes a VM (and boots it when req.Start is set, or when it
// comes from a snapshot).
func (c *Client) CreateVM(ctx context.Context, req api.CreateVM) (smolvm.VMInfo, error) {
	var info smolvm.VMInfo
	err := c.call(ctx, http.MethodPost, "/vms", nil, req, &info)
	return info, err
}

// ListVMs lists VMs, optionally only those in state and made from image
// ("" = any).
func (c *Client) ListVMs(ctx context.Context, state smolvm.VMState, img string, labels ...string) ([]smolvm.VMInfo, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", string(state))
	}
	if img != "" {
		q.Set("image", img)
	}
	for _, l := range labels { // KEY or KEY=VALUE, all must match
		q.Add("label", l)
	}
	var l api.VMList
	err := c.call(ctx, http.MethodGet, "/vms", q, nil, &l)
	return l.VMs, err
}

// VM is one VM's info, refreshed by the server.
func (c *Client) VM(ctx context.Context, id string) (smolvm.VMInfo, error) {
	var info smolvm.VMInfo
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id), nil, nil, &info)
	return info, err
}

// DeleteVM deletes a VM and everything it holds.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/vms/"+esc(id), nil, nil, nil)
}

// StartVM boots a created or stopped VM (0 = the default boot timeout).
func (c *Client) StartVM(ctx context.Context, id string, bootTimeout time.Duration) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "start", api.Start{BootTimeoutSeconds: seconds(bootTimeout)})
}

// StartVMWithSecrets is StartVM handing the guest start secrets
// (smolvm.WithStartSecrets).
func (c *Client) StartVMWithSecrets(ctx context.Context, id string, bootTimeout time.Duration, secrets map[string]string) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "start", api.Start{BootTimeoutSeconds: seconds(bootTimeout), Secrets: secrets})
}

// StopVM shuts a VM down, killing it after timeout (0 = the default).
func (c *Client) StopVM(ctx context.Context, id string, timeout time.Duration) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "stop", api.Stop{TimeoutSeconds: seconds(timeout)})
}

// SetTTL gives a VM a new lifetime from now (0 = none); onExpire ""
// keeps its own.
func (c *Client) SetTTL(ctx context.Context, id string, ttl time.Duration, onExpire string) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "ttl", api.SetTTL{TTLSeconds: ttl.Seconds(), OnExpire: onExpire})
}

// PauseVM freezes a VM, or hibernates it with toDisk.
func (c *Client) PauseVM(ctx context.Context, id string, toDisk bool) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "pause", api.Pause{ToDisk: toDisk})
}

// ResumeVM continues a paused or hibernated VM.
func (c *Client) ResumeVM(ctx context.Context, id string) (smolvm.VMInfo, error) {
	return c.vmAction(ctx, id, "resume", nil)
}

func (c *Client) vmAction(ctx context.Context, id, action string, body any) (smolvm.VMInfo, error) {
	var info smolvm.VMInfo
	err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/"+action, nil, body, &info)
	return info, err
}

// Env is the VM's persistent environment.
func (c *Client) Env(ctx context.Context, id string) (map[string]string, error) {
	var e api.Env
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/env", nil, nil, &e)
	return e.Env, err
}

// PatchEnv sets p.Set, then removes p.Unset, and returns the environment.
func (c *Client) PatchEnv(ctx context.Context, id string, p api.EnvPatch) (map[string]string, error) {
	var e api.Env
	err := c.call(ctx, http.MethodPatch, "/vms/"+esc(id)+"/env", nil, p, &e)
	return e.Env, err
}

// Ports lists a VM's port forwards.
func (c *Client) Ports(ctx context.Context, id string) ([]smolvm.PortForward, error) {
	var l api.PortList
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/ports", nil, nil, &l)
	return l.Ports, err
}

// Expose forwards a host port to a guest port.
func (c *Client) Expose(ctx context.Context, id string, e api.Expose) (smolvm.PortForward, error) {
	var f smolvm.PortForward
	err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/ports", nil, e, &f)
	return f, err
}

// Unexpose removes the forward from hostAddr:hostPort.
func (c *Client) Unexpose(ctx context.Context, id, hostAddr string, hostPort int) error {
	q := url.Values{"host_addr": {hostAddr}, "host_port": {strconv.Itoa(hostPort)}}
	return c.call(ctx, http.MethodDelete, "/vms/"+esc(id)+"/ports", q, nil, nil)
}

// Logs streams the VM's console log; with follow the body goes on while
// the VM runs (until ctx ends). tail > 0 starts that many lines from the
// end. The caller closes it.
func (c *Client) Logs(ctx context.Context, id string, follow bool, tail int) (io.ReadCloser, error) {
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	if tail > 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/vms/" + esc(id) + "/logs", query: q})
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Snapshot captures the running VM id as the snapshot name.
func (c *Client) Snapshot(ctx context.Context, id string, req api.CreateSnapshot) (*smolvm.SnapshotInfo, error) {
	var s smolvm.SnapshotInfo
	if err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/snapshots", nil, req, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Fork makes n running children of the running VM id.
func (c *Client) Fork(ctx context.Context, id string, n int) ([]smolvm.VMInfo, error) {
	var l api.VMList
	err := c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/fork", nil, api.Fork{Count: n}, &l)
	return l.VMs, err
}

// Snapshots lists snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]smolvm.SnapshotInfo, error) {
	var l api.SnapshotList
	err := c.call(ctx, http.MethodGet, "/snapshots", nil, nil, &l)
	return l.Snapshots, err
}

// GetSnapshot is one snapshot's info.
func (c *Client) GetSnapshot(ctx context.Context, name string) (*smolvm.SnapshotInfo, error) {
	var s smolvm.SnapshotInfo
	if err := c.call(ctx, http.MethodGet, "/snapshots/"+esc(name), nil, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// RemoveSnapshot removes a snapshot no VM depends on.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/snapshots/"+esc(name), nil, nil, nil)
}

// RemoveKeptDisk removes the disk the deleted VM id kept.
func (c *Client) RemoveKeptDisk(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/disks/"+esc(id), nil, nil, nil)
}

// Images lists built images.
func (c *Client) Images(ctx context.Context) ([]*image.Image, error) {
	var l api.ImageList
	if err := c.call(ctx, http.MethodGet, "/images", nil, nil, &l); err != nil {
		return nil, err
	}
	imgs := make([]*image.Image, len(l.Images))
	for i := range l.Images {
		imgs[i] = &l.Images[i]
	}
	return imgs, nil
}

// Image is one image's manifest.
func (c *Client) Image(ctx context.Context, name string) (*image.Image, error) {
	var img image.Image
	if err := c.call(ctx, http.MethodGet, "/images/"+esc(name), nil, nil, &img); err != nil {
		return nil, err
	}
	return &img, nil
}

// RemoveImage removes an image.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/images/"+esc(name), nil, nil, nil)
}

// BuildImage builds (or finds cached) an image; progress, when not nil,
// gets each progress message as the server sends it.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImage, progress func(string)) (*image.Image, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(ctx, request{method: http.MethodPost, path: "/images", body: bytes.NewReader(b), ctype: "application/json"})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var img *image.Image
	err = readEvents(resp.Body, func(ev api.Event) (bool, error) {
		switch ev.Type {
		case "progress":
			if progress != nil {
				progress(ev.Message)
			}
		case "result":
			if ev.Image == nil {
				return true, fmt.Errorf("smolvm server at %s: image build: a result without an image", c.host)
			}
			img = ev.Image
			return true, nil
		case "error":
			return true, eventError(resp.StatusCode, ev)
		}
		return false, nil
	})
	if err != nil {
		return nil, c.streamError(ctx, err)
	}
	if img == nil {
		return nil, c.streamError(ctx, io.ErrUnexpectedEOF)
	}
	return img, nil
}

// maxEventLine bounds one NDJSON line: data events carry at most a few
// tens of KiB, image manifests a few KiB.
const maxEventLine = 4 << 20

// readEvents calls fn for each NDJSON event until fn says it was the last.
// A stream that ends before that is io.ErrUnexpectedEOF.
func readEvents(r io.Reader, fn func(api.Event) (last bool, err error)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev api.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("bad event %.80q: %w", line, err)
		}
		last, err := fn(ev)
		if err != nil || last {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// eventError is the error an "error" event reports.
func eventError(status int, ev api.Event) error {
	if ev.Error == nil {
		return &Error{Status: status, Code: api.CodeInternal, Message: "the server reported an error without saying which"}
	}
	return fromDetail(api.Status(ev.Error.Code), *ev.Error)
}

// streamError explains a stream that broke off.
func (c *Client) streamError(ctx context.Context, err error) error {
	if _, ok := err.(*Error); ok {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("smolvm server at %s: the stream broke off: %w", c.host, err)
}

// Policy is the VM's egress policy and what it means for its network.
func (c *Client) Policy(ctx context.Context, id string) (smolvm.EgressStatus, error) {
	var st smolvm.EgressStatus
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/policy", nil, nil, &st)
	return st, err
}

// PutPolicy replaces the VM's egress policy and returns the VM.
func (c *Client) PutPolicy(ctx context.Context, id string, p smolvm.EgressPolicy) (smolvm.VMInfo, error) {
	var info smolvm.VMInfo
	err := c.call(ctx, http.MethodPut, "/vms/"+esc(id)+"/policy", nil, p, &info)
	return info, err
}
