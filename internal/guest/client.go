// Package guest is the host's side of the channel into a smolvm guest: an
// SSH client pinned to the guest's host key, speaking to internal/agent.
package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
)

// Client is one persistent SSH connection to a guest. It is safe for
// concurrent use; every call opens its own channel on the connection.
type Client struct {
	ssh       *ssh.Client
	closeOnce sync.Once
	closeErr  error
}

// Dial connects to the guest at addr, accepting only hostKey and
// authenticating with key. It retries until ctx is done, since the guest may
// still be booting; a host key mismatch or a rejected client key ends it at
// once (ErrHostKeyMismatch, ErrAuthFailed). On ctx expiry the error wraps
// ctx.Err() and the last dial error. With Via, a missing device ends it at
// once too (ErrNoInterface), before anything is sent.
func Dial(ctx context.Context, addr string, hostKey ssh.PublicKey, key ssh.Signer, opts ...DialOption) (*Client, error) {
	if hostKey == nil || key == nil {
		return nil, errors.New("guest: dial: host key and client key are required")
	}
	var cfg dialConfig
	for _, o := range opts {
		o(&cfg)
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
		lastErr = err
		pause.Reset(retryPause)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest: dial %s: %w (last error: %w)", addr, ctx.Err(), lastErr)
		case <-pause.C:
		}
	}
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
	conn, chans, reqs, err := ssh.NewClientConn(nc, addr, conf)
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
	return &Client{ssh: ssh.NewClient(conn, chans, reqs)}, nil
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
	c.closeOnce.Do(func() { c.closeErr = c.ssh.Close() })
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
// the Client closes it too.
func (c *Client) SFTP() (*sftp.Client, error) {
	sc, err := sftp.NewClient(c.ssh)
	if err != nil {
		return nil, fmt.Errorf("guest: sftp: %w", err)
	}
	return sc, nil
}
