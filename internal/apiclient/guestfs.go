package apiclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"syscall"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/guest"
)

// Stat describes the guest path p (lstat).
func (c *Client) Stat(ctx context.Context, id, p string) (smolvm.FileInfo, error) {
	var fi smolvm.FileInfo
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/files/stat", url.Values{"path": {p}}, nil, &fi)
	return fi, err
}

// ReadDir lists the guest directory p, sorted by name.
func (c *Client) ReadDir(ctx context.Context, id, p string) ([]smolvm.FileInfo, error) {
	var l api.FileList
	err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/files/list", url.Values{"path": {p}}, nil, &l)
	return l.Entries, err
}

// Mkdir makes the guest directory p (parents: and missing parents).
func (c *Client) Mkdir(ctx context.Context, id, p string, perm fs.FileMode, parents bool) error {
	return c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/files/mkdir", nil, api.Mkdir{Path: p, Parents: parents, Perm: uint32(perm.Perm())}, nil)
}

// Remove removes the guest path p (recursive: a whole tree, and a missing
// p is no error).
func (c *Client) Remove(ctx context.Context, id, p string, recursive bool) error {
	q := url.Values{"path": {p}}
	if recursive {
		q.Set("recursive", "true")
	}
	return c.call(ctx, http.MethodDelete, "/vms/"+esc(id)+"/files", q, nil, nil)
}

// Rename renames the guest path from to to.
func (c *Client) Rename(ctx context.Context, id, from, to string) error {
	return c.call(ctx, http.MethodPost, "/vms/"+esc(id)+"/files/rename", nil, api.Rename{From: from, To: to}, nil)
}

// ReadFileBytes returns the guest file p's bytes, at most limit of them
// (more: an error matching smolvm.ErrTooLarge).
func (c *Client) ReadFileBytes(ctx context.Context, id, p string, limit int64) ([]byte, error) {
	r, err := c.ReadFile(ctx, id, p)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if r.IsTar {
		return nil, &fs.PathError{Op: "read", Path: p, Err: syscall.EISDIR}
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: %w: over the limit of %d bytes", p, smolvm.ErrTooLarge, limit)
	}
	return b, nil
}

// Watch streams the changes in the guest directory p to fn until ctx is
// done (ctx.Err()), the directory goes (nil), or the server reports an
// error. ready (nil: none) is called once the guest watches: the server
// answers then. Lines are bounded as the SDK bounds the guest's.
func (c *Client) Watch(ctx context.Context, id, p string, recursive bool, ready func(), fn func(smolvm.WatchEvent)) error {
	q := url.Values{"path": {p}, "recursive": {strconv.FormatBool(recursive)}}
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/vms/" + esc(id) + "/files/watch", query: q})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ready != nil {
		ready()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), guest.MaxWatchLine+1024)
	for sc.Scan() {
		var e api.WatchEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("smolvm server at %s: watch: bad event: %w", c.host, err)
		}
		if e.Error != nil {
			return fromDetail(api.Status(e.Error.Code), *e.Error)
		}
		fn(e.WatchEvent)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return c.streamError(ctx, err)
	}
	return nil
}
