package guest

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Err returns why the connection ended (ErrUnresponsive, ErrGone or
// ErrClosed, possibly wrapped), or nil while it is up. A Client whose Err
// is non-nil fails every call; dial a new one.
func (c *Client) Err() error {
	select {
	case <-c.ended:
		return c.endErr
	default:
		return nil
	}
}

// SetKeepalive changes how often the guest is probed while calls are in
// flight and how many unanswered probes in a row make it dead. Values <= 0
// keep the current setting.
func (c *Client) SetKeepalive(interval time.Duration, misses int) {
	c.mu.Lock()
	if interval > 0 {
		c.interval = interval
	}
	if misses > 0 {
		c.misses = misses
	}
	c.mu.Unlock()
	select {
	case c.retune <- struct{}{}:
	default:
	}
}

// SetPeerCheck installs a look at the VM from outside the connection,
// called on every keepalive tick while calls are in flight: a VM paused on
// purpose keeps its connection however long it is silent, and one whose
// process is gone loses it at once. Without one, the peer counts as
// running.
func (c *Client) SetPeerCheck(f func() PeerState) {
	c.mu.Lock()
	c.peerCheck = f
	c.mu.Unlock()
}

// liveConn counts the reads that brought data: a guest that keeps sending
// (a long download on a loaded machine, say) is alive even while the
// reply to a probe is still queued behind its data.
type liveConn struct {
	net.Conn
	reads atomic.Int64
}

func (l *liveConn) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if n > 0 {
		l.reads.Add(1)
	}
	return n, err
}

// end records why the connection is over (the first reason wins) and
// closes it, which fails every call blocked on it.
func (c *Client) end(err error) {
	c.endOnce.Do(func() {
		c.endErr = err
		close(c.ended)
	})
	c.closeOnce.Do(func() { c.closeErr = c.ssh.Close() })
}

// begin marks a call in flight; call the returned func when it is done.
func (c *Client) begin() func() {
	c.active.Add(1)
	var once sync.Once
	return func() { once.Do(func() { c.active.Add(-1) }) }
}

// cause returns err, naming why the connection ended if it has: a call
// cut short by a dead guest must say so, not just "EOF".
func (c *Client) cause(err error) error {
	if e := c.Err(); e != nil && e != ErrClosed {
		return fmt.Errorf("%w: %w", e, err)
	}
	return err
}

func (c *Client) settings() (time.Duration, int, func() PeerState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.interval, c.misses, c.peerCheck
}

// keepalive probes the guest while calls are in flight, and ends the
// connection when the guest stops answering or its process is gone. An
// idle connection is left alone: probes wake the guest, and an idle VM
// should cost nothing. x/crypto/ssh lets one global request wait for its
// reply at a time, so at most one probe is outstanding; a tick at which it
// is still unanswered and nothing at all came from the guest since the
// last tick is a miss.
func (c *Client) keepalive() {
	interval, _, _ := c.settings()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	replied := make(chan struct{}, 1)
	outstanding, missed := false, 0
	var seen int64 // c.conn.reads at the last tick
	for {
		select {
		case <-c.ended:
			return
		case <-c.retune:
			interval, _, _ = c.settings()
			tick.Reset(interval)
			continue
		case <-replied:
			outstanding, missed = false, 0
			continue
		case <-tick.C:
		}
		if c.active.Load() == 0 && !outstanding {
			continue
		}
		_, misses, check := c.settings()
		if check != nil {
			switch check() {
			case PeerGone:
				c.end(ErrGone)
				return
			case PeerPaused:
				missed = 0
				continue
			}
		}
		if reads := c.conn.reads.Load(); reads != seen {
			seen, missed = reads, 0 // the guest sent something: not dead
		} else if outstanding {
			missed++
			if missed >= misses {
				c.end(fmt.Errorf("%w: a keepalive went unanswered and nothing came for %s", ErrUnresponsive, time.Duration(missed)*interval))
				return
			}
		}
		if outstanding {
			continue
		}
		outstanding = true
		go func() {
			// The agent refuses unknown requests, but any reply proves it alive.
			if _, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil); err == nil {
				replied <- struct{}{}
			}
		}()
	}
}
