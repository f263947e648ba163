// Package server is `smolvm serve`: the Go SDK (the root package) behind
// the HTTP API that docs/api.md and openapi.json describe, with the wire
// types of internal/api. Every route calls the SDK's facade; none reaches
// past it.
package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/image/oci"
	"github.com/smolvm/smolvm/internal/api"
)

// MaxJSONBody is the limit of a JSON request body.
const MaxJSONBody = 1 << 20

// Config configures a Server. The zero value serves the default state
// directory with the SDK's defaults.
type Config struct {
	// Home is the state directory; empty = smolvm.DefaultHome().
	Home string
	// Agent is the guest agent binary handed to the SDK and the image
	// builder; empty = the SDK's default.
	Agent string
	// AlpineSource is the Alpine minirootfs for the default image; empty =
	// $SMOLVM_ALPINE_SOURCE, else Alpine's CDN.
	AlpineSource string
	// Network is the default network mode of new VMs (smolvm.NetworkAuto
	// when empty); a request may ask for another.
	Network string
	// Version is reported by /v1/health.
	Version string
	// Logger receives request and lifecycle logs; nil = discard.
	Logger *slog.Logger
	// MaxUpload caps one upload (a file or a tar); 0 = DefaultMaxUpload.
	MaxUpload int64
	// MCP, when set, is mounted at /mcp behind the same auth: the MCP
	// streamable HTTP transport.
	MCP http.Handler
	// Keeper is the smolvm CLI that runs as each VM's keeper
	// (smolvm.WithKeeper); empty = the SDK's default.
	Keeper string
}

// Server serves the API. Its handlers are safe for concurrent use; it
// keeps one *smolvm.VM per VM id so that a command reuses the VM's SSH
// connection instead of dialing per request.
type Server struct {
	cfg  Config
	log  *slog.Logger
	mux  *http.ServeMux
	vms  handles
	busy activity
}

// New makes a Server. Call Close when done with it.
func New(cfg Config) *Server {
	if cfg.Home == "" {
		cfg.Home = smolvm.DefaultHome()
	}
	if cfg.Network == "" {
		cfg.Network = smolvm.NetworkAuto
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.vms.m = map[string]*handle{}
	s.busy.last.Store(time.Now().UnixNano())
	s.mux = http.NewServeMux()
	for _, rt := range s.routes() {
		s.mux.Handle(rt.Method+" "+rt.Pattern, rt.handler)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errNoRoute(r))
	})
	return s
}

// Close releases every cached VM handle (the VMs keep running).
func (s *Server) Close() error {
	s.vms.closeAll()
	return nil
}

// Handler is the API for one listener. A non-empty token is required as
// a bearer token on every request (the UNIX socket, private to its owner,
// needs none).
func (s *Server) Handler(token string) http.Handler {
	var h http.Handler = http.HandlerFunc(s.serveHTTP)
	h = s.track(h)
	if token != "" {
		h = requireToken(token, h)
	}
	return h
}

// serveHTTP routes a request. The mux's catch-all "/" answers unknown
// paths; a known path with the wrong method also lands there (the
// catch-all matches every method), so the methods the path allows are
// looked up here for a JSON 405.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.MCP != nil && (r.URL.Path == "/mcp" || strings.HasPrefix(r.URL.Path, "/mcp/")) {
		s.cfg.MCP.ServeHTTP(w, r)
		return
	}
	if _, pattern := s.mux.Handler(r); pattern == "/" {
		var allowed []string
		for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, p := s.mux.Handler(r2); p != "/" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			allow := strings.Join(allowed, ", ")
			w.Header().Set("Allow", allow)
			writeError(w, r, &apiError{code: api.CodeNotAllowed,
				msg: r.Method + " is not allowed on " + r.URL.Path + "; allowed: " + allow})
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// requireToken answers 401 to a request without "Authorization: Bearer
// token", before anything else runs. The comparison takes the same time
// whatever the guess.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The scheme's name is case-insensitive (RFC 9110 11.1).
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			// Hang up after the answer, without reading the body first:
			// net/http would otherwise read an unread body of up to 256
			// KiB, without a deadline, before answering, so a client
			// without the token that never sends it would hold the
			// connection (and keep an idle server alive) forever.
			w.Header().Set("Connection", "close")
			http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Second))
			w.Header().Set("WWW-Authenticate", `Bearer realm="smolvm"`)
			writeError(w, r, &apiError{code: api.CodeUnauthorized,
				msg: "missing or wrong bearer token: send Authorization: Bearer TOKEN (smolvm serve prints where the token is kept; clients read SMOLVM_TOKEN)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sdk is the options of every SDK call, plus extra.
func (s *Server) sdk(extra ...smolvm.Option) []smolvm.Option {
	opts := []smolvm.Option{smolvm.WithHome(s.cfg.Home), smolvm.WithLogger(s.log), smolvm.WithNetwork(s.cfg.Network)}
	if s.cfg.Agent != "" {
		opts = append(opts, smolvm.WithAgent(s.cfg.Agent))
	}
	if s.cfg.AlpineSource != "" {
		opts = append(opts, smolvm.WithAlpineSource(s.cfg.AlpineSource))
	}
	if s.cfg.Keeper != "" {
		opts = append(opts, smolvm.WithKeeper(s.cfg.Keeper))
	}
	return append(opts, extra...)
}

// builder is the image builder of the state directory.
func (s *Server) builder() *image.Builder {
	return &image.Builder{CacheDir: s.cfg.Home, Agent: s.cfg.Agent, AlpineSource: s.cfg.AlpineSource, Logger: s.log, OCI: oci.Puller{}}
}

// handles caches one *smolvm.VM per id. A handle dropped from the cache
// (its VM deleted, or gone from under it) is closed once the last request
// using it is done with it.
type handles struct {
	mu sync.Mutex
	m  map[string]*handle
}

type handle struct {
	vm      *smolvm.VM
	refs    int  // requests using it; guarded by handles.mu
	dropped bool // out of the cache: close when refs is 0
}

// vm returns a handle on id, cached or new, and the function to call when
// the request is done with it.
func (s *Server) vm(ctx context.Context, id string) (*smolvm.VM, func(), error) {
	s.vms.mu.Lock()
	if h := s.vms.m[id]; h != nil && h.vm.Status() != smolvm.StateDeleted {
		h.refs++
		s.vms.mu.Unlock()
		// A handle that saw its VM not running may be behind another
		// process (the CLI started it); a running one is checked by the
		// SDK on each call anyway.
		if h.vm.Status() == smolvm.StateRunning || h.vm.Refresh(ctx) == nil {
			return h.vm, func() { s.release(h) }, nil
		}
		s.forget(h.vm)
		s.release(h)
	} else {
		s.vms.mu.Unlock()
	}
	v, err := smolvm.FromID(ctx, id, s.sdk()...)
	if err != nil {
		return nil, nil, err
	}
	h := s.cache(v)
	s.vms.mu.Lock()
	h.refs++
	s.vms.mu.Unlock()
	return h.vm, func() { s.release(h) }, nil
}

// remember caches v, a handle a request made (create, fork), and returns
// the handle to use: v, or one another request cached first.
func (s *Server) remember(v *smolvm.VM) *smolvm.VM { return s.cache(v).vm }

func (s *Server) cache(v *smolvm.VM) *handle {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	if cur := s.vms.m[v.ID()]; cur != nil && cur.vm != v {
		if cur.vm.Status() != smolvm.StateDeleted {
			v.Close()
			return cur
		}
		s.dropLocked(cur)
	}
	h := &handle{vm: v}
	s.vms.m[v.ID()] = h
	return h
}

func (s *Server) release(h *handle) {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	h.refs--
	if h.dropped && h.refs == 0 {
		h.vm.Close()
	}
}

// forget drops the cached handle on v's VM if it is v.
func (s *Server) forget(v *smolvm.VM) {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	if h := s.vms.m[v.ID()]; h != nil && h.vm == v {
		s.dropLocked(h)
	}
}

func (s *Server) dropLocked(h *handle) {
	if s.vms.m[h.vm.ID()] == h {
		delete(s.vms.m, h.vm.ID())
	}
	if !h.dropped {
		h.dropped = true
		if h.refs == 0 {
			h.vm.Close()
		}
	}
}

// dropIfGone forgets v when err says its VM is gone or not running, in
// this process's view or another's (deleted and made again, stopped by
// the CLI): the next request reconnects with a fresh handle.
func (s *Server) dropIfGone(v *smolvm.VM, err error) {
	if errors.Is(err, smolvm.ErrNotFound) || errors.Is(err, smolvm.ErrNotRunning) {
		s.forget(v)
	}
}

func (h *handles) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, e := range h.m {
		e.vm.Close()
		delete(h.m, id)
	}
}

// activity counts requests in flight and open connections, for the idle
// timeout.
type activity struct {
	requests atomic.Int64
	conns    atomic.Int64
	last     atomic.Int64 // UnixNano of the last time it went idle or busy
}

func (s *Server) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.busy.requests.Add(1)
		start := time.Now()
		defer func() {
			s.busy.requests.Add(-1)
			s.busy.last.Store(time.Now().UnixNano())
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "took", time.Since(start))
		}()
		next.ServeHTTP(w, r)
	})
}

// connState keeps the connection count of an http.Server. A hijacked
// connection (a WebSocket) is counted by its request, which lasts as long.
func (s *Server) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.busy.conns.Add(1)
	case http.StateClosed, http.StateHijacked:
		s.busy.conns.Add(-1)
		s.busy.last.Store(time.Now().UnixNano())
	}
}

// IdleFor is how long the server has had no request in flight and no
// connection open; 0 while it has.
func (s *Server) IdleFor() time.Duration {
	if s.busy.requests.Load() > 0 || s.busy.conns.Load() > 0 {
		return 0
	}
	return time.Since(time.Unix(0, s.busy.last.Load()))
}
