// Package mcpserver serves smolvm to AI agents over the Model Context
// Protocol (https://modelcontextprotocol.io), on the official Go SDK: tools
// to create sandboxes (VMs), run commands in them, write and read files,
// list, snapshot, fork and delete them. It sits on the smolvm facade only.
//
// An agent is not fully trusted. By default a session acts only on the
// sandboxes it made itself and on sandboxes other MCP sessions made and
// asked to keep; the user's other VMs are invisible to it
// (Config.AllVMs widens this). Sandboxes a session made are deleted when it
// ends unless the agent asked to keep them.
package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/smolvm/smolvm"
)

// Config configures a Server.
type Config struct {
	// Home is the state directory (required): the VMs' and the MCP
	// registry's ($Home/mcp).
	Home string
	// Options go to every SDK call (agent, network mode, Alpine source...).
	// WithHome(Home) is added.
	Options []smolvm.Option
	// AllVMs lets sessions list, use and delete every VM and create from
	// every snapshot of the state directory, not only those made through
	// MCP.
	AllVMs bool
	// Logger receives the server's own log (default: discard). Never
	// stdout: over stdio that is the protocol.
	Logger *slog.Logger
	// Version is reported to clients as the server's version.
	Version string
	// MaxSandboxes bounds how many sandboxes one session may have at
	// once (made and not yet deleted, kept ones included): 0 = 16.
	MaxSandboxes int
	// SessionTimeout closes an HTTP session (and deletes its unkept
	// sandboxes) after this long without a request: 0 = 30 minutes.
	SessionTimeout time.Duration
}

// Defaults of Config.
const (
	DefaultSessionTimeout = 30 * time.Minute
	DefaultMaxSandboxes   = 16
)

// eofGrace is how long calls in flight may go on once stdin has ended.
const eofGrace = 5 * time.Second

// cleanupTimeout bounds deleting one session's sandboxes at its end.
const cleanupTimeout = 2 * time.Minute

// Server is an MCP server on one state directory. One Server may serve
// stdio and HTTP sessions at once; each session has its own sandboxes.
type Server struct {
	cfg   Config
	opts  []smolvm.Option
	reg   registry
	log   *slog.Logger
	owner owner

	mu       sync.Mutex
	sessions map[*mcp.ServerSession]*session
	closed   bool
}

// owner identifies this server process in the registry: the PID and its
// start time, so that a reused PID is not taken for it.
type owner struct {
	pid   int
	start uint64
}

// alive reports whether the owner still runs. A zombie is dead: its
// parent (the agent's MCP client) may not have reaped it yet.
func (o owner) alive() bool {
	if o.pid <= 0 {
		return false
	}
	state, start, err := procStat(o.pid)
	return err == nil && start == o.start && state != 'Z' && state != 'X'
}

// procStat reads a process's state and start time (clock ticks since
// boot) from /proc/PID/stat.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22 overall
	return f[0][0], start, err
}

// session is what one MCP session made and opened.
type session struct {
	// ctx is cancelled when the session ends, and with it every call in
	// flight (see withSession).
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	ended bool
	// cleaned is closed once the session's sandboxes are deleted.
	cleaned chan struct{}
	// made: sandboxes this session created, by id, with whether to keep
	// them past its end.
	made map[string]bool
	// open: handles this session uses, reused across calls (the SSH
	// connection stays up between commands).
	open map[string]*smolvm.VM
	// pending counts sandboxes being made, against Config.MaxSandboxes.
	pending int
}

// bind returns ctx, cancelled also when the session ends.
func (st *session) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(st.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// reserve claims room for n more sandboxes of the session; release gives
// it back once they are made (and counted in made) or failed.
func (st *session) reserve(n, max int) (release func(), err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if have := len(st.made) + st.pending; have+n > max {
		return nil, fmt.Errorf("this session has %d sandboxes, and may have at most %d at once: delete_sandbox the ones it no longer needs", have, max)
	}
	st.pending += n
	return func() {
		st.mu.Lock()
		st.pending -= n
		st.mu.Unlock()
	}, nil
}

// New makes a Server. It first deletes the unkept sandboxes of MCP
// servers that died without cleaning up (killed with SIGKILL).
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Home == "" {
		return nil, fmt.Errorf("mcpserver: %w: Config.Home is empty", smolvm.ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = DefaultSessionTimeout
	}
	if cfg.MaxSandboxes <= 0 {
		cfg.MaxSandboxes = DefaultMaxSandboxes
	}
	pid := os.Getpid()
	_, start, err := procStat(pid)
	if err != nil {
		return nil, fmt.Errorf("mcpserver: own start time: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		opts:     append(slices.Clip(cfg.Options), smolvm.WithHome(cfg.Home)),
		reg:      registry{dir: filepath.Join(cfg.Home, "mcp")},
		log:      cfg.Logger,
		owner:    owner{pid: pid, start: start},
		sessions: map[*mcp.ServerSession]*session{},
	}
	s.sweepOrphans(ctx)
	return s, nil
}

// newMCP makes the protocol server with the tools. versions, when not
// empty, restricts the protocol versions it speaks.
func (s *Server) newMCP(versions []string) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "smolvm", Title: "smolvm microVM sandboxes", Version: s.cfg.Version}, &mcp.ServerOptions{
		Instructions:              instructions,
		Logger:                    s.log,
		SupportedProtocolVersions: versions,
		Capabilities:              &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}},
	})
	s.addTools(srv)
	return srv
}

const instructions = `smolvm gives you Linux sandboxes: real microVMs (Alpine Linux by default, root shell, network). ` +
	`Make one with create_sandbox, then use run_command, write_file and read_file with its id. ` +
	`Sandboxes you make are deleted when this session ends unless you pass keep: true. ` +
	`snapshot_sandbox saves one (memory and disk) to start copies from later; fork_sandbox makes running copies now.`

// ServeStdio serves one session over stdin and stdout, as ServeIO does.
func (s *Server) ServeStdio(ctx context.Context) error {
	return s.ServeIO(ctx, os.Stdin, os.Stdout)
}

// ServeIO serves one session of newline-delimited JSON-RPC over r and w
// until r ends or ctx is cancelled, then deletes the session's unkept
// sandboxes. Calls in flight when r ends get a few seconds to finish,
// then are cancelled: the client may be gone, and an hour-long command
// must not keep its sandboxes alive.
func (s *Server) ServeIO(ctx context.Context, r io.ReadCloser, w io.WriteCloser) error {
	eof := make(chan struct{})
	unanswered := new(unanswered)
	answers := &answerWriter{WriteCloser: w, unanswered: unanswered}
	t := &mcp.IOTransport{
		Reader: &eofReader{ReadCloser: r, eof: eof, unanswered: unanswered, answers: answers},
		Writer: answers,
	}
	return s.serve(ctx, t, eof)
}

// Serve serves one session over t until the client ends it or ctx is
// cancelled, then deletes the session's unkept sandboxes.
func (s *Server) Serve(ctx context.Context, t mcp.Transport) error {
	return s.serve(ctx, t, nil)
}

func (s *Server) serve(ctx context.Context, t mcp.Transport, eof <-chan struct{}) error {
	ss, err := s.newMCP(nil).Connect(ctx, t, nil)
	if err != nil {
		return fmt.Errorf("mcp: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- ss.Wait() }()
	select {
	case <-ctx.Done():
	case err = <-done:
	case <-eof:
		// stdin ended. A script that pipes its requests in still reads
		// the answers, so the calls in flight may finish; a client that
		// died reads nothing, so they are cut short after a while.
		select {
		case <-ctx.Done():
		case err = <-done:
		case <-time.After(eofGrace):
		}
	}
	s.abort(ss)
	ss.Close()
	if ctx.Err() != nil {
		err = nil // asked to stop: not a failure
	}
	s.endSession(context.WithoutCancel(ctx), ss)
	if errors.Is(err, mcp.ErrConnectionClosed) {
		err = nil
	}
	return err
}

// eofReader closes eof when its reader ends (EOF or error).
// eofReader hands the SDK stdin one JSON message a line. A line that is
// not JSON is answered here with JSON-RPC's parse error and dropped: the
// SDK would end the session on it. It says on eof when stdin ends, and
// holds the end back from the SDK until every request read has its
// answer written (or eofGrace passes): the SDK drops requests it has read
// but not yet answered when its input ends, and a script that pipes its
// requests in and closes stdin at once (echo ... | smolvm mcp) would get
// no answers.
type eofReader struct {
	io.ReadCloser
	eof        chan struct{}
	once       sync.Once
	unanswered *unanswered
	answers    *answerWriter // where parse errors go
	partial    []byte        // a line read in part
	buf        []byte        // what stdin gave, read into
	out        []byte        // whole lines for the SDK
	err        error         // stdin's end, once out is drained
}

// maxLine bounds a message's length, as the partial line kept.
const maxLine = 16 << 20

func (r *eofReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 && r.err == nil {
		if r.buf == nil {
			r.buf = make([]byte, 64<<10)
		}
		n, err := r.ReadCloser.Read(r.buf)
		r.lines(r.buf[:n], err != nil)
		if err != nil {
			r.err = err
		}
	}
	if len(r.out) > 0 {
		n := copy(p, r.out)
		r.out = r.out[n:]
		return n, nil
	}
	r.once.Do(func() { close(r.eof) })
	for deadline := time.Now().Add(eofGrace); r.unanswered.count() > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return 0, r.err
}

// lines moves the whole lines of partial+b to out (all of it at the end).
func (r *eofReader) lines(b []byte, end bool) {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(r.partial)+len(b) > maxLine {
				r.answers.parseError("a message longer than 16 MiB")
				r.partial, b = r.partial[:0], nil
			}
			r.partial = append(r.partial, b...)
			if end && len(r.partial) > 0 {
				r.line(r.partial)
				r.partial = nil
			}
			return
		}
		r.line(append(r.partial, b[:i]...))
		r.partial, b = r.partial[:0], b[i+1:]
	}
}

func (r *eofReader) line(l []byte) {
	l = bytes.TrimSpace(l)
	switch {
	case len(l) == 0:
	case !json.Valid(l):
		r.answers.parseError("not JSON")
	default:
		r.unanswered.add(isRequest(l))
		r.out = append(append(r.out, l...), '\n')
	}
}

// answerWriter counts the answers the SDK writes, and writes parse errors
// between them.
type answerWriter struct {
	io.WriteCloser
	unanswered *unanswered
	mu         sync.Mutex
	line       []byte
}

func (w *answerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.WriteCloser.Write(p)
	w.line = w.unanswered.scan(w.line, p[:n], isAnswer)
	return n, err
}

// parseError answers a line that is no JSON-RPC message (JSON-RPC 2.0
// section 5.1: code -32700, id null).
func (w *answerWriter) parseError(why string) {
	msg, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": nil,
		"error": map[string]any{"code": -32700, "message": "parse error: " + why + "; send one JSON-RPC message per line"}})
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.line) == 0 { // not in the middle of the SDK's message
		w.WriteCloser.Write(append(msg, '\n'))
	}
}

// unanswered counts requests read minus answers written.
type unanswered struct {
	mu sync.Mutex
	n  int
}

func (u *unanswered) add(d int) {
	u.mu.Lock()
	u.n += d
	u.mu.Unlock()
}

func (u *unanswered) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

// scan adds the complete lines of partial+p to the count as kind says
// (+1 a request, -1 an answer, 0 neither), and returns what is left of an
// unfinished line (at most a megabyte of it is kept: a longer message is
// not counted, and only makes the end wait its grace).
func (u *unanswered) scan(partial, p []byte, kind func([]byte) int) []byte {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(partial)+len(p) <= 1<<20 {
				partial = append(partial, p...)
			}
			return partial
		}
		line := append(partial, p[:i]...)
		partial, p = partial[:0], p[i+1:]
		if d := kind(line); d != 0 {
			u.mu.Lock()
			u.n += d
			u.mu.Unlock()
		}
	}
	return partial
}

// jsonrpcHead is what tells a JSON-RPC request from an answer.
type jsonrpcHead struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

func head(line []byte) (jsonrpcHead, bool) {
	var h jsonrpcHead
	if json.Unmarshal(line, &h) != nil || len(h.ID) == 0 || string(h.ID) == "null" {
		return h, false
	}
	return h, true
}

func isRequest(line []byte) int {
	if h, ok := head(line); ok && h.Method != "" {
		return 1
	}
	return 0
}

func isAnswer(line []byte) int {
	if h, ok := head(line); ok && h.Method == "" {
		return -1
	}
	return 0
}

// Handler serves MCP's streamable HTTP transport (mounted at /mcp by
// smolvm serve). It speaks the protocol versions that have sessions
// (up to 2025-11-25): in the sessionless 2026-07-28 protocol every request
// is a session of its own, and there would be no "end of the session" for
// an agent's sandboxes to last until. A session ends with the client's
// DELETE, or after Config.SessionTimeout without requests.
func (s *Server) Handler() http.Handler {
	var legacy []string
	for _, v := range mcp.SupportedProtocolVersions() {
		if v < "2026-07-28" {
			legacy = append(legacy, v)
		}
	}
	srv := s.newMCP(legacy)
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{
		Logger:         s.log,
		SessionTimeout: s.cfg.SessionTimeout,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			// The SDK closes the session once its calls return: end them
			// first. (An unknown id matches no session; the SDK answers.)
			if id := r.Header.Get("Mcp-Session-Id"); id != "" {
				s.abortID(id)
			}
		}
		h.ServeHTTP(w, r)
	})
}

// Close ends every session: their unkept sandboxes are deleted. Later
// calls make nothing.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var all []*mcp.ServerSession
	for ss := range s.sessions {
		all = append(all, ss)
	}
	s.mu.Unlock()
	for _, ss := range all {
		s.abort(ss)
		ss.Close()
		s.endSession(ctx, ss)
	}
	return nil
}

// session returns the state of ss, made on first use. A goroutine waits
// for ss to end and then cleans up after it.
func (s *Server) session(ss *mcp.ServerSession) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("the MCP server is shutting down")
	}
	if st, ok := s.sessions[ss]; ok {
		return st, nil
	}
	st := &session{made: map[string]bool{}, open: map[string]*smolvm.VM{}, cleaned: make(chan struct{})}
	st.ctx, st.cancel = context.WithCancel(context.Background())
	s.sessions[ss] = st
	go func() {
		ss.Wait()
		s.endSession(context.Background(), ss)
	}()
	return st, nil
}

// abort cancels the calls in flight in ss, so that it can close: the SDK
// closes a session only once its handlers have returned.
func (s *Server) abort(ss *mcp.ServerSession) {
	s.mu.Lock()
	st := s.sessions[ss]
	s.mu.Unlock()
	if st != nil {
		st.cancel()
	}
}

// abortID is abort by session id (an HTTP DELETE names its session so).
func (s *Server) abortID(id string) {
	s.mu.Lock()
	var st *session
	for ss, v := range s.sessions {
		if ss.ID() == id {
			st = v
		}
	}
	s.mu.Unlock()
	if st != nil {
		st.cancel()
	}
}

// endSession deletes the sandboxes ss made and did not keep, and closes
// its handles. It runs once per session, whoever calls it first; other
// callers wait until it is done (the process must not exit meanwhile).
func (s *Server) endSession(ctx context.Context, ss *mcp.ServerSession) {
	s.mu.Lock()
	st, ok := s.sessions[ss]
	s.mu.Unlock()
	if !ok {
		return
	}
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		<-st.cleaned
		return
	}
	st.ended = true
	st.cancel()
	made, open := st.made, st.open
	st.made, st.open = map[string]bool{}, map[string]*smolvm.VM{}
	st.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	for id, keep := range made {
		if keep {
			continue
		}
		vm := open[id]
		delete(open, id)
		if err := s.deleteVM(ctx, vm, id); err != nil {
			s.log.Warn("mcp: delete sandbox at session end", "vm", id, "err", err)
		} else {
			s.log.Info("mcp: deleted sandbox at session end", "vm", id)
		}
	}
	for _, vm := range open {
		vm.Close()
	}
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	close(st.cleaned)
}

// deleteVM deletes the VM id (through vm when it is open) and its
// registry record. A VM already gone is not an error.
func (s *Server) deleteVM(ctx context.Context, vm *smolvm.VM, id string) error {
	if vm == nil {
		var err error
		vm, err = smolvm.FromID(ctx, id, s.opts...)
		if errors.Is(err, smolvm.ErrNotFound) {
			s.reg.removeVM(id)
			return nil
		}
		if err != nil {
			return err
		}
	}
	err := vm.Delete(ctx)
	if errors.Is(err, smolvm.ErrNotFound) {
		err = nil
	}
	if err == nil {
		s.reg.removeVM(id)
	}
	return err
}

// sweepOrphans deletes the unkept sandboxes whose server died without
// cleaning up, and forgets records of VMs that no longer exist.
func (s *Server) sweepOrphans(ctx context.Context) {
	for _, id := range s.reg.names("vms") {
		rec, ok, err := s.reg.vm(id)
		if err != nil || !ok {
			continue
		}
		if rec.Keep {
			// Forget a kept sandbox that was deleted outside MCP.
			if vm, err := smolvm.FromID(ctx, id, s.opts...); errors.Is(err, smolvm.ErrNotFound) {
				s.reg.removeVM(id)
			} else if err == nil {
				if !recordMatches(rec, vm.Info()) {
					s.reg.removeVM(id)
				}
				vm.Close()
			}
			continue
		}
		if (owner{pid: rec.OwnerPID, start: rec.OwnerStart}).alive() {
			continue
		}
		vm, err := smolvm.FromID(ctx, id, s.opts...)
		if errors.Is(err, smolvm.ErrNotFound) {
			s.reg.removeVM(id)
			continue
		}
		if err != nil {
			s.log.Warn("mcp: orphaned sandbox", "vm", id, "err", err)
			continue
		}
		if !recordMatches(rec, vm.Info()) {
			// The id now names a VM that is not the one recorded (the
			// sandbox was deleted and the name reused): not ours.
			vm.Close()
			s.reg.removeVM(id)
			continue
		}
		if err := vm.Delete(ctx); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			s.log.Warn("mcp: delete orphaned sandbox", "vm", id, "err", err)
			continue
		}
		s.log.Info("mcp: deleted orphaned sandbox", "vm", id)
		s.reg.removeVM(id)
	}
	for _, name := range s.reg.names("snapshots") {
		if _, err := smolvm.GetSnapshot(ctx, name, s.opts...); errors.Is(err, smolvm.ErrNotFound) {
			s.reg.removeSnapshot(name)
		}
	}
}

// recordMatches reports whether rec describes the VM info shows: the
// same creation time, or, for a record written before its VM existed
// (CreatedAt zero), a VM made after the record.
func recordMatches(rec vmRecord, info smolvm.VMInfo) bool {
	if rec.CreatedAt.IsZero() {
		return !rec.Since.IsZero() && !info.CreatedAt.Before(rec.Since)
	}
	return rec.CreatedAt.Equal(info.CreatedAt)
}
