// Package guest is the host's side of the channel into a smolvm guest: an
// SSH client pinned to the guest's host key, speaking to internal/agent.
package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

var (
	// ErrHostKeyMismatch means the server at the address is not the guest
	// whose host key was pinned.
	ErrHostKeyMismatch = errors.New("guest: host key mismatch")
	// ErrAuthFailed means the guest did not accept the client key.
	ErrAuthFailed = errors.New("guest: authentication failed")
	// ErrNoInterface means the interface Dial was told to use (Via) does
	// not exist: the VM's TAP device is gone.
	ErrNoInterface = errors.New("guest: interface gone")
	// ErrUnresponsive means the guest stopped answering: keepalives went
	// unanswered (the connection is then closed and every call on it
	// fails), or a step that is not a user command ran past its default
	// bound (dial, session start, env).
	ErrUnresponsive = errors.New("guest: not responding")
	// ErrGone means the VM process exited under a live connection.
	ErrGone = errors.New("guest: VM process is gone")
	// ErrClosed means the connection was closed or dropped.
	ErrClosed = errors.New("guest: connection closed")
)

// DialOption adjusts Dial.
type DialOption func(*dialConfig)

type dialConfig struct {
	device string
}

// Via binds the connection to the host network interface dev (the VM's
// TAP device): it then reaches the guest through that device or not at
// all. Without it, a guest address whose device has vanished is routed
// like any other address, out through the host's default route.
func Via(dev string) DialOption { return func(c *dialConfig) { c.device = dev } }

const (
	// attemptTimeout bounds one TCP connect while the guest boots; an
	// unanswered SYN must not hide a listener that appears meanwhile.
	attemptTimeout = 250 * time.Millisecond
	// retryPause separates dial attempts: short, so readiness is noticed
	// within tens of milliseconds, yet no busy loop.
	retryPause = 20 * time.Millisecond
	// handshakeTimeout bounds one SSH handshake. With user-mode networking
	// the host side accepts TCP before the guest listens, so a handshake
	// may stall on a connection nobody serves.
	handshakeTimeout = 5 * time.Second

	// DefaultDialTimeout bounds Dial when ctx has no deadline: longer than
	// a loaded machine's boot, so a VM another process just started is
	// still waited for, but a guest that never answers is not.
	DefaultDialTimeout = 30 * time.Second
	// DefaultSetupTimeout bounds what is not a user's command: opening a
	// session and starting it, and a whole env request.
	DefaultSetupTimeout = 30 * time.Second
	// DefaultKeepaliveInterval and DefaultKeepaliveMisses: while calls
	// are in flight the client probes the guest every interval, and
	// declares it dead after that many ticks in a row with a probe
	// unanswered and nothing else received either, so a frozen guest
	// fails its calls 20-25 s after it last sent anything. A quiet command
	// is never cut: the agent answers probes while it runs.
	DefaultKeepaliveInterval = 5 * time.Second
	DefaultKeepaliveMisses   = 4
)

// PeerState is what the host sees of the VM from outside the connection.
type PeerState int

const (
	// PeerRunning: the VM process runs, so silence counts against it.
	PeerRunning PeerState = iota
	// PeerPaused: the VM is frozen on purpose; silence is expected and
	// the connection is kept for when it resumes.
	PeerPaused
	// PeerGone: the VM process has exited; the connection is closed at
	// once with ErrGone.
	PeerGone
)

// Client is one persistent SSH connection to a guest. It is safe for
// concurrent use; every call opens its own channel on the connection.
type Client struct {
	ssh       *ssh.Client
	closeOnce sync.Once
	closeErr  error

	// ended is closed once the connection is gone, for whatever reason;
	// endErr then says why.
	ended   chan struct{}
	endOnce sync.Once
	endErr  error

	active atomic.Int64 // calls in flight; keepalives run only meanwhile
	conn   *liveConn

	mu        sync.Mutex
	interval  time.Duration
	misses    int
	peerCheck func() PeerState
	retune    chan struct{} // wakes the keepalive loop after SetKeepalive
}

// Dial connects to the guest at addr, accepting only hostKey and
// authenticating with key. It retries until ctx is done, since the guest may
// still be booting; a host key mismatch or a rejected client key ends it at
// once (ErrHostKeyMismatch, ErrAuthFailed). On ctx expiry the error wraps
// ctx.Err() and the last dial error. With Via, a missing device ends it at
// once too (ErrNoInterface), before anything is sent.
//
// Without a deadline on ctx, Dial gives up after DefaultDialTimeout with an
// error wrapping ErrUnresponsive.
func Dial(ctx context.Context, addr string, hostKey ssh.PublicKey, key ssh.Signer, opts ...DialOption) (*Client, error) {
	if hostKey == nil || key == nil {
		return nil, errors.New("guest: dial: host key and client key are required")
	}
	var cfg dialConfig
	for _, o := range opts {
		o(&cfg)
	}
	bounded := false
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
		bounded = true
	}
	var lastErr error
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		c, err := dialOnce(ctx, addr, hostKey, key, cfg)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, ErrAuthFailed) || errors.Is(err, ErrNoInterface) {
			return nil, err
		}
		// An attempt cut short by ctx's deadline says only "i/o timeout";
		// the one before it (refused, reset...) is what tells the caller
		// why. The dialer's own timer can fire before ctx reads as done,
		// so the clock decides, not ctx.Err.
		if lastErr == nil || !pastDeadline(ctx) {
			lastErr = err
		}
		pause.Reset(retryPause)
		select {
		case <-ctx.Done():
			if bounded && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("guest: dial %s: %w: no SSH answer within %s (last error: %w)", addr, ErrUnresponsive, DefaultDialTimeout, lastErr)
			}
			return nil, fmt.Errorf("guest: dial %s: %w (last error: %w)", addr, ctx.Err(), lastErr)
		case <-pause.C:
		}
	}
}

// pastDeadline reports whether ctx is done or its deadline has come.
func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(d)
}

// dialOnce makes one connection attempt.
func dialOnce(ctx context.Context, addr string, hostKey ssh.PublicKey, key ssh.Signer, cfg dialConfig) (*Client, error) {
	d := net.Dialer{Timeout: attemptTimeout}
	if cfg.device != "" {
		d.Control = bindToDevice(cfg.device)
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("%w: dial %s through %s: %w; the VM's TAP device was removed: stop and start the VM to make it again", ErrNoInterface, addr, cfg.device, err)
	}
	if err != nil {
		return nil, err
	}
	// Verified means the far end proved it holds the guest's host key: the
	// agent is up, so a failure after that is not worth retrying.
	var verified, mismatch atomic.Bool
	want := hostKey.Marshal()
	conf := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: func(_ string, _ net.Addr, got ssh.PublicKey) error {
			if !bytes.Equal(got.Marshal(), want) {
				mismatch.Store(true)
				return fmt.Errorf("%w: got %s, want %s", ErrHostKeyMismatch,
					ssh.FingerprintSHA256(got), ssh.FingerprintSHA256(hostKey))
			}
			verified.Store(true)
			return nil
		},
		HostKeyAlgorithms: hostKeyAlgorithms(hostKey),
	}

	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	lc := &liveConn{Conn: nc}
	conn, chans, reqs, err := ssh.NewClientConn(lc, addr, conf)
	if !stop() && err == nil {
		// ctx ended during the handshake; its deadline may already be armed.
		conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		nc.Close()
		switch {
		case mismatch.Load() && errors.Is(err, ErrHostKeyMismatch):
			return nil, fmt.Errorf("guest: dial %s: %w", addr, err)
		case mismatch.Load():
			return nil, fmt.Errorf("guest: dial %s: %w: %w", addr, ErrHostKeyMismatch, err)
		case verified.Load():
			return nil, fmt.Errorf("guest: dial %s: %w: %w", addr, ErrAuthFailed, err)
		}
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return newClient(ssh.NewClient(conn, chans, reqs), lc), nil
}

func newClient(sc *ssh.Client, lc *liveConn) *Client {
	c := &Client{
		ssh:      sc,
		conn:     lc,
		ended:    make(chan struct{}),
		interval: DefaultKeepaliveInterval,
		misses:   DefaultKeepaliveMisses,
		retune:   make(chan struct{}, 1),
	}
	go func() {
		_ = sc.Wait()
		c.end(ErrClosed)
	}()
	go c.keepalive()
	return c
}

// bindToDevice sets SO_BINDTODEVICE before connect, so the kernel never
// routes the connection through another interface.
func bindToDevice(dev string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// hostKeyAlgorithms asks the server for the pinned key's own algorithm, so a
// guest with several host keys still presents the one we know.
func hostKeyAlgorithms(k ssh.PublicKey) []string {
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{k.Type()}
}

// Close closes the connection, ending every session on it. It is idempotent.
func (c *Client) Close() error {
	c.end(ErrClosed)
	return c.closeErr
}

// Poweroff asks the guest to power off. The guest answers before it starts
// shutting down; the connection drops soon after.
func (c *Client) Poweroff(ctx context.Context) error {
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, _, err := c.ssh.SendRequest("poweroff@smolvm", true, nil)
		done <- result{ok, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return fmt.Errorf("guest: poweroff: %w", r.err)
		}
		if !r.ok {
			return errors.New("guest: poweroff: refused by guest")
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("guest: poweroff: %w", ctx.Err())
	}
}

// SFTP opens an SFTP session on the connection. Close it when done; closing
// the Client closes it too. Opening it is bounded by DefaultSetupTimeout,
// and while it is open the connection counts as in use, so a guest that
// stops answering fails its file operations (ErrUnresponsive) instead of
// hanging them.
func (c *Client) SFTP() (*sftp.Client, error) { return c.SFTPLimited(nil) }

// SFTPLimited is SFTP whose client receives through lim (nil: no limit),
// for callers that make requests a hostile guest could answer without
// end.
func (c *Client) SFTPLimited(lim *RecvLimit) (*sftp.Client, error) {
	end := c.begin()
	type opened struct {
		s   *ssh.Session
		in  io.WriteCloser
		out io.Reader
		err error
	}
	done := make(chan opened, 1)
	go func() {
		s, err := c.ssh.NewSession()
		if err != nil {
			done <- opened{err: err}
			return
		}
		in, err := s.StdinPipe()
		var out io.Reader
		if err == nil {
			out, err = s.StdoutPipe()
		}
		if err == nil {
			err = s.RequestSubsystem("sftp")
		}
		if err != nil {
			s.Close()
		}
		done <- opened{s, in, out, err}
	}()
	timer := time.NewTimer(DefaultSetupTimeout)
	defer timer.Stop()
	var o opened
	select {
	case o = <-done:
	case <-timer.C:
		go func() {
			if o := <-done; o.err == nil {
				o.s.Close()
			}
		}()
		end()
		return nil, fmt.Errorf("guest: sftp: %w: no answer within %s", ErrUnresponsive, DefaultSetupTimeout)
	}
	if o.err != nil {
		end()
		return nil, fmt.Errorf("guest: sftp: %w", c.cause(o.err))
	}
	out := o.out
	if lim != nil {
		out = lim.Reader(out)
	}
	sc, err := sftp.NewClientPipe(out, &sessionWriter{WriteCloser: o.in, s: o.s, end: end})
	if err != nil {
		o.s.Close()
		end()
		return nil, fmt.Errorf("guest: sftp: %w", c.cause(err))
	}
	return sc, nil
}

// sessionWriter is the SFTP client's side of the session: closing it, as
// sftp.Client.Close does, ends the session and the call's claim on the
// connection.
type sessionWriter struct {
	io.WriteCloser
	s    *ssh.Session
	end  func()
	once sync.Once
}

func (w *sessionWriter) Close() error {
	err := w.WriteCloser.Close()
	w.once.Do(func() {
		w.s.Close()
		w.end()
	})
	return err
}
