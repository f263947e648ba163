package guest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/agent"
	"github.com/smolvm/smolvm/internal/guest"
	"golang.org/x/crypto/ssh"
)

// controlSocket listens on a UNIX socket whose path is longer than a
// socket address holds (as a VM's agent.sock may be) and runs serve on
// each connection, as the guest's end of the control port.
func controlSocket(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")
	// Bind through the directory's descriptor: the path is too long.
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/agent.sock", d.Fd()))
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return path
}

func dialControl(t *testing.T, path string) *guest.Control {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := guest.DialControl(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestControlRoundTrip runs the host client against the agent's real
// protocol code: every field arrives as sent.
func TestControlRoundTrip(t *testing.T) {
	applied := make(chan agent.Identity, 1)
	path := controlSocket(t, func(c net.Conn) {
		agent.ServeControl(c, c, func(id agent.Identity) error {
			if id.Hostname == "refuse" {
				return errors.New("hostname: not today")
			}
			applied <- id
			return nil
		})
	})
	if len(path) <= 108 {
		t.Fatalf("test socket path is only %d bytes", len(path))
	}
	c := dialControl(t, path)
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}

	host, hostPEM, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	client, _, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := guest.NewSeed()
	mid, _ := guest.NewMachineID()
	now := time.Now()
	want := guest.Identity{
		Hostname: "clone-7", Address: netip.MustParsePrefix("10.9.8.7/28"), Gateway: netip.MustParseAddr("10.9.8.1"),
		MAC: "02:aa:bb:cc:dd:ee", DNS: []netip.Addr{netip.MustParseAddr("10.9.8.1"), netip.MustParseAddr("10.0.0.53")},
		HostKeyPEM: hostPEM, AuthorizedKeys: ssh.MarshalAuthorizedKey(client.PublicKey()),
		MachineID: mid, Seed: seed, Time: now,
	}
	start := time.Now()
	if err := c.Identity(ctx, want); err != nil {
		t.Fatalf("identity: %v", err)
	}
	t.Logf("identity round trip over a socket: %v", time.Since(start))
	got := <-applied
	if got.Hostname != want.Hostname || got.Address != want.Address || got.Gateway != want.Gateway ||
		got.MAC.String() != want.MAC || len(got.DNS) != 2 || got.DNS[1] != want.DNS[1] ||
		got.MachineID != mid || !bytes.Equal(got.Seed, seed) || !got.Time.Equal(now) {
		t.Errorf("guest applied %+v\nhost sent %+v", got, want)
	}
	if !bytes.Equal(got.HostKey.PublicKey().Marshal(), host.PublicKey().Marshal()) ||
		len(got.AuthorizedKeys) != 1 || !bytes.Equal(got.AuthorizedKeys[0].Marshal(), client.PublicKey().Marshal()) {
		t.Error("keys differ")
	}

	// A refusal is the guest's word, and the Control stays usable.
	var refused *guest.ControlError
	if err := c.Identity(ctx, guest.Identity{Hostname: "refuse"}); !errors.As(err, &refused) || refused.Msg != "hostname: not today" {
		t.Fatalf("refused identity: %v", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after a refusal: %v", err)
	}
}

// TestControlAfterHalfALine: half a request an earlier host left in the
// guest's buffer does not swallow the first request of the next one.
func TestControlAfterHalfALine(t *testing.T) {
	path := controlSocket(t, func(c net.Conn) {
		agent.ServeControl(io.MultiReader(strings.NewReader(`{"id":99,"op":"identity","hostname":"ha`), c), c, nil)
	})
	c := dialControl(t, path)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
}

func TestControlValidatesBeforeSending(t *testing.T) {
	got := make(chan struct{}, 10)
	path := controlSocket(t, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			got <- struct{}{}
		}
	})
	c := dialControl(t, path)
	_, pem, _ := guest.GenerateKey()
	for _, tc := range []struct {
		name string
		id   guest.Identity
		want string
	}{
		{"ipv6", guest.Identity{Address: netip.MustParsePrefix("fd00::1/64")}, "IPv4"},
		{"gateway alone", guest.Identity{Gateway: netip.MustParseAddr("10.0.0.1")}, "gateway"},
		{"multicast mac", guest.Identity{MAC: "01:00:5e:00:00:01"}, "unicast"},
		{"host key alone", guest.Identity{HostKeyPEM: pem}, "together"},
		{"machine id", guest.Identity{MachineID: "ABC"}, "machine id"},
		{"short seed", guest.Identity{Seed: []byte("abc")}, "seed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.Identity(context.Background(), tc.id); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Identity = %v, want an error about %q", err, tc.want)
			}
		})
	}
	select {
	case <-got:
		t.Error("an invalid identity was sent")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestControlHostileGuest: whatever the guest sends back, a call ends
// soon with an error, having read a bounded amount, and the Control is
// closed after anything but a refusal.
func TestControlHostileGuest(t *testing.T) {
	// answerWith reads one request and replies with what reply makes of
	// its id.
	answerWith := func(reply func(id uint64) []byte) func(net.Conn) {
		return func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadBytes('\n')
				if err != nil {
					return
				}
				var req struct{ ID uint64 }
				json.Unmarshal(line, &req)
				if _, err := c.Write(reply(req.ID)); err != nil {
					return
				}
			}
		}
	}
	endless := func(c net.Conn) {
		chunk := bytes.Repeat([]byte("a"), 4096)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}
	tests := []struct {
		name  string
		serve func(net.Conn)
		ok    bool
		want  error
	}{
		{"endless line", endless, false, guest.ErrControlProtocol},
		{"garbage", answerWith(func(uint64) []byte { return []byte("hello\n") }), false, guest.ErrControlProtocol},
		{"no id", answerWith(func(uint64) []byte { return []byte(`{"ok":true}` + "\n") }), false, guest.ErrControlProtocol},
		{"ok and error", answerWith(func(id uint64) []byte {
			return fmt.Appendf(nil, `{"id":%d,"ok":true,"error":"x"}`+"\n", id)
		}), false, guest.ErrControlProtocol},
		{"neither ok nor error", answerWith(func(id uint64) []byte { return fmt.Appendf(nil, `{"id":%d}`+"\n", id) }), false, guest.ErrControlProtocol},
		{"many stale answers", answerWith(func(id uint64) []byte {
			return bytes.Repeat(fmt.Appendf(nil, `{"id":%d,"ok":true}`+"\n", id+1), 10000)
		}), false, guest.ErrControlProtocol},
		{"stale answer then ours", answerWith(func(id uint64) []byte {
			return fmt.Appendf(nil, `{"id":%d,"ok":true}`+"\n"+`{"id":%d,"ok":true}`+"\n", id-1, id)
		}), true, nil},
		{"hangs up", func(c net.Conn) {}, false, guest.ErrClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialControl(t, controlSocket(t, tc.serve))
			start := time.Now()
			err := c.Ping(context.Background())
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
			if tc.ok {
				if err != nil {
					t.Fatalf("Ping = %v", err)
				}
				return
			}
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Ping = %v, want %v", err, tc.want)
			}
			if err := c.Ping(context.Background()); !errors.Is(err, guest.ErrClosed) {
				t.Errorf("a Control out of step was used again: %v", err)
			}
		})
	}
}

func TestControlSilentGuest(t *testing.T) {
	path := controlSocket(t, func(c net.Conn) {
		buf := make([]byte, 1024)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c := dialControl(t, path)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Ping = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		c := dialControl(t, path)
		time.AfterFunc(100*time.Millisecond, func() { c.Close() })
		start := time.Now()
		if err := c.Ping(context.Background()); !errors.Is(err, guest.ErrClosed) || time.Since(start) > 2*time.Second {
			t.Errorf("Ping = %v after %v, want ErrClosed soon", err, time.Since(start))
		}
		if err := c.Ping(context.Background()); !errors.Is(err, guest.ErrClosed) {
			t.Errorf("Ping after Close = %v, want ErrClosed", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		c := dialControl(t, path)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		if err := c.Ping(ctx); !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
			t.Errorf("Ping = %v after %v, want Canceled soon", err, time.Since(start))
		}
	})
}

func TestDialControlNoSocket(t *testing.T) {
	_, err := guest.DialControl(context.Background(), filepath.Join(t.TempDir(), "agent.sock"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DialControl = %v, want not exist", err)
	}
}
