package guest_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// freezer forwards TCP to a guest and can stop forwarding in both
// directions, as a guest whose VM is frozen stops answering.
type freezer struct {
	addr   string
	mu     sync.Mutex
	frozen bool
	thaw   *sync.Cond
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f := &freezer{addr: ln.Addr().String()}
	f.thaw = sync.NewCond(&f.mu)
	t.Cleanup(func() { f.set(false) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); u.Close() })
			go f.pipe(u, c)
			go f.pipe(c, u)
		}
	}()
	return f
}

func (f *freezer) set(frozen bool) {
	f.mu.Lock()
	f.frozen = frozen
	f.mu.Unlock()
	f.thaw.Broadcast()
}

func (f *freezer) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.thaw.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func dialVia(t *testing.T, g *testGuest, addr string) *guest.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, addr, g.hostKey.PublicKey(), g.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetKeepalive(100*time.Millisecond, 3)
	return c
}

func TestKeepaliveFrozenGuest(t *testing.T) {
	g := startGuest(t)
	f := newFreezer(t, g.addr)
	c := dialVia(t, g, f.addr)
	if _, err := c.Exec(context.Background(), guest.ExecRequest{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	f.set(true)
	start := time.Now()
	errs := make(chan error, 3)
	go func() {
		_, err := c.Exec(context.Background(), guest.ExecRequest{Command: "echo hi"})
		errs <- err
	}()
	go func() { _, err := c.Env(context.Background()); errs <- err }()
	go func() {
		sc, err := c.SFTP()
		if err == nil {
			_, err = sc.Stat("/")
			sc.Close()
		}
		errs <- err
	}()
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, guest.ErrUnresponsive) {
				t.Errorf("call on a frozen guest: %v, want ErrUnresponsive", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("call on a frozen guest still blocked after 5s")
		}
	}
	t.Logf("failed after %v", time.Since(start))
	if !errors.Is(c.Err(), guest.ErrUnresponsive) {
		t.Errorf("Err() = %v", c.Err())
	}
}

func TestKeepaliveQuietCommandLives(t *testing.T) {
	g := startGuest(t)
	c := dialVia(t, g, g.addr)
	var out strings.Builder
	code, err := c.Exec(context.Background(), guest.ExecRequest{Command: "sleep 1.5; echo done", Stdout: &out})
	if err != nil || code != 0 || out.String() != "done\n" {
		t.Fatalf("quiet command: code %d, out %q, err %v", code, out.String(), err)
	}
}

func TestKeepalivePeerCheck(t *testing.T) {
	g := startGuest(t)
	f := newFreezer(t, g.addr)
	c := dialVia(t, g, f.addr)
	var state atomic.Int32
	c.SetPeerCheck(func() guest.PeerState { return guest.PeerState(state.Load()) })

	// Paused on purpose: silence is kept, the command finishes after.
	state.Store(int32(guest.PeerPaused))
	f.set(true)
	done := make(chan error, 1)
	var out strings.Builder
	go func() {
		_, err := c.Exec(context.Background(), guest.ExecRequest{Command: "echo resumed", Stdout: &out})
		done <- err
	}()
	time.Sleep(time.Second) // ten keepalive intervals
	state.Store(int32(guest.PeerRunning))
	f.set(false)
	if err := <-done; err != nil || out.String() != "resumed\n" {
		t.Fatalf("command across a pause: %q, %v", out.String(), err)
	}

	// Gone: the connection ends at the next tick.
	state.Store(int32(guest.PeerGone))
	start := time.Now()
	_, err := c.Exec(context.Background(), guest.ExecRequest{Command: "sleep 30"})
	if !errors.Is(err, guest.ErrGone) || time.Since(start) > 3*time.Second {
		t.Fatalf("command on a gone VM: %v after %v, want ErrGone at once", err, time.Since(start))
	}
}

func TestCancelOneCommandKeepsOthers(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	killed := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, guest.ExecRequest{Command: "sleep 30"})
		killed <- err
	}()
	var out strings.Builder
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), guest.ExecRequest{Command: "sleep 1; echo other", Stdout: &out})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-killed; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled command: %v", err)
	}
	if err := <-done; err != nil || out.String() != "other\n" {
		t.Fatalf("other command: %q, %v", out.String(), err)
	}
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

func TestLimitedBuffer(t *testing.T) {
	tests := []struct {
		limit   int64
		writes  []string
		want    string
		trunced bool
	}{
		{10, []string{"abc", "def"}, "abcdef", false},
		{4, []string{"abc", "def"}, "abcd", true},
		{3, []string{"abc"}, "abc", false},
		{3, []string{"abc", ""}, "abc", false},
		{3, []string{"abc", "d"}, "abc", true},
	}
	for _, tt := range tests {
		b := &guest.LimitedBuffer{Limit: tt.limit}
		for _, w := range tt.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("Write(%q) = %d, %v; writes must never fail", w, n, err)
			}
		}
		if b.String() != tt.want || b.Truncated != tt.trunced {
			t.Errorf("limit %d, writes %q: %q truncated=%v; want %q %v", tt.limit, tt.writes, b.String(), b.Truncated, tt.want, tt.trunced)
		}
	}
}
