// Package apiclient is a Go client of `smolvm serve`: the HTTP API of
// docs/api.md, with the wire types of internal/api. Errors the server
// reports come back as *Error values that match the SDK's sentinels
// (smolvm.ErrNotFound, smolvm.ErrTimeout, ...) with errors.Is, so code
// written against the SDK's error set works unchanged over the API.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/guest"
)

// ErrUnauthorized matches a request the server refused for its token.
var ErrUnauthorized = errors.New("unauthorized")

// ErrUnreachable matches a server that could not be reached at all.
var ErrUnreachable = errors.New("server unreachable")

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// Client talks to one smolvm server. Its methods are safe for concurrent
// use.
type Client struct {
	host  string // as given, for messages
	base  string // http://host:port or http://smolvm for a UNIX socket
	token string
	hc    *http.Client
}

// New returns a client of the server at host: "unix:///path/to.sock" or
// "tcp://host:port" (as SMOLVM_HOST takes). token is sent as a bearer
// token when not empty; a TCP server needs it.
func New(host, token string) (*Client, error) {
	u, err := url.Parse(host)
	if err != nil || u.Opaque != "" {
		return nil, invalidHost(host)
	}
	var dial func(ctx context.Context, _, _ string) (net.Conn, error)
	c := &Client{host: host, token: token}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" || path == "" || u.RawQuery != "" {
			return nil, invalidHost(host)
		}
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		// The name only fills the Host header; the dialer ignores it.
		c.base = "http://smolvm"
	case "tcp":
		if u.Host == "" || (u.Path != "" && u.Path != "/") || u.Port() == "" {
			return nil, invalidHost(host)
		}
		addr := u.Host
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
		c.base = "http://" + addr
	default:
		return nil, invalidHost(host)
	}
	c.hc = &http.Client{
		// The API never redirects; a server that does is not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			DialContext:           dial,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       30 * time.Second,
			ResponseHeaderTimeout: 0, // long operations (boots, builds) answer late
			DisableCompression:    true,
			// Proxy stays nil: HTTP_PROXY must not see the token.
		}}
	return c, nil
}

func invalidHost(host string) error {
	return fmt.Errorf("%w: host %q: want unix:///path/to/smolvm.sock or tcp://HOST:PORT", smolvm.ErrInvalid, host)
}

// Host is the server's address as given to New.
func (c *Client) Host() string { return c.host }

// Close lets go of idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Error is an error the server reported: its stable code, HTTP status and
// message. It matches the SDK's sentinel for its code with errors.Is.
type Error struct {
	Status  int
	Code    string
	Message string
	Field   string
	Errno   string // a failed file operation's errno in the guest
}

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("server: %s (HTTP %d)", e.Code, e.Status)
}

// Is maps the code back to the SDK's error set, and a guest errno to
// itself (so fs.ErrNotExist, syscall.EISDIR... match as from the SDK).
func (e *Error) Is(target error) bool {
	if errno, ok := guest.Errno(e.Errno); ok && (target == errno || errno.Is(target)) {
		return true
	}
	switch e.Code {
	case api.CodePermission:
		return target == fs.ErrPermission
	case api.CodeTooLarge:
		return target == smolvm.ErrInvalid || target == smolvm.ErrTooLarge
	case api.CodeInvalid, api.CodeUnsupported, api.CodeNotAllowed:
		return target == smolvm.ErrInvalid
	case api.CodeNotFound:
		return target == smolvm.ErrNotFound
	case api.CodeAlreadyExists:
		return target == smolvm.ErrAlreadyExists
	case api.CodeNotRunning:
		return target == smolvm.ErrNotRunning
	case api.CodeInUse:
		return target == smolvm.ErrInUse
	case api.CodeTimeout:
		return target == smolvm.ErrTimeout || target == context.DeadlineExceeded
	case api.CodeUnauthorized:
		return target == ErrUnauthorized
	case api.CodeCanceled:
		return target == context.Canceled
	}
	return false
}

// fromDetail makes an *Error of a reported error.
func fromDetail(status int, d api.ErrorDetail) *Error {
	e := &Error{Status: status, Code: d.Code, Message: d.Message, Field: d.Field, Errno: d.Errno}
	if e.Code == api.CodeUnauthorized {
		e.Message = "the server refused the token (401 unauthorized): give the right one with --token or SMOLVM_TOKEN (the server keeps it in $SMOLVM_HOME/" + api.TokenFile + ")"
	}
	return e
}

// responseError reads an error response: the API's JSON error body, or
// anything else (a proxy, another program on the port) as internal.
func (c *Client) responseError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb api.ErrorBody
	if err := json.Unmarshal(body, &eb); err == nil && eb.Error.Code != "" {
		return fromDetail(resp.StatusCode, eb.Error)
	}
	code := api.CodeInternal
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		code = api.CodeUnauthorized
	case http.StatusNotFound:
		code = api.CodeNotFound
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return fromDetail(resp.StatusCode, api.ErrorDetail{Code: code,
		Message: fmt.Sprintf("%s answered %s, not a smolvm API error (is it a smolvm server?): %s", c.host, resp.Status, msg)})
}

// transportError explains a request that got no answer.
func (c *Client) transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &unreachableError{host: c.host, err: op}
	}
	return fmt.Errorf("smolvm server at %s: %w", c.host, err)
}

// unreachableError is a server nothing answers at.
type unreachableError struct {
	host string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("no smolvm server at %s (start one with `smolvm serve`, or check --host / %s): %v", e.host, api.HostEnv, e.err)
}

func (e *unreachableError) Unwrap() error        { return e.err }
func (e *unreachableError) Is(target error) bool { return target == ErrUnreachable }

// request is one call: method, path under /v1, query, body.
type request struct {
	method string
	path   string
	query  url.Values
	body   io.Reader
	ctype  string
	header http.Header
}

// url is the request's address.
func (c *Client) url(path string, q url.Values) string {
	u := c.base + "/" + api.Version + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// send makes the request and returns the response if its status is 2xx;
// otherwise the server's error. The caller closes the body.
func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, r.method, c.url(r.path, r.query), r.body)
	if err != nil {
		return nil, err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if r.ctype != "" {
		req.Header.Set("Content-Type", r.ctype)
	}
	c.authorize(req.Header)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, c.responseError(resp)
	}
	return resp, nil
}

func (c *Client) authorize(h http.Header) {
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
}

// call sends in as JSON (nil: no body) and decodes the response into out
// (nil: the body is dropped).
func (c *Client) call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	r := request{method: method, path: path, query: q}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		r.body, r.ctype = bytes.NewReader(b), "application/json"
	}
	resp, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("smolvm server at %s: %s %s: bad response: %w", c.host, method, path, err)
	}
	return nil
}

// Health asks the server who it is.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	err := c.call(ctx, http.MethodGet, "/health", nil, nil, &h)
	return h, err
}

// Doctor runs the server's host checks.
func (c *Client) Doctor(ctx context.Context) ([]smolvm.Check, error) {
	var r api.Checks
	err := c.call(ctx, http.MethodGet, "/doctor", nil, nil, &r)
	return r.Checks, err
}

// seconds is a duration on the wire.
func seconds(d time.Duration) float64 { return d.Seconds() }

// esc escapes one path segment.
func esc(s string) string { return url.PathEscape(s) }
