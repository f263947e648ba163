package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/guest"
)

// hostileAgent is an SSH server that answers every smolvm-proc (and
// exec) session by writing what reply writes, then an exit status.
func hostileAgent(t *testing.T, reply func(ch ssh.Channel)) *testGuest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	g := &testGuest{addr: ln.Addr().String(), hostKey: newKey(t), clientKey: newKey(t)}
	conf := &ssh.ServerConfig{NoClientAuth: true}
	conf.AddHostKey(g.hostKey)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, chans, reqs, err := ssh.NewServerConn(nc, conf)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nch := range chans {
					ch, creqs, err := nch.Accept()
					if err != nil {
						continue
					}
					go func() {
						for req := range creqs {
							if req.WantReply {
								req.Reply(true, nil)
							}
							if req.Type == "subsystem" || req.Type == "exec-argv@smolvm" {
								go func() {
									defer ch.Close()
									reply(ch)
									ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
								}()
							}
						}
					}()
				}
			}()
		}
	}()
	return g
}

// TestProcHostileAgent: whatever an agent sends back on smolvm-proc, the
// host's memory stays bounded and the call ends with an error.
func TestProcHostileAgent(t *testing.T) {
	tests := []struct {
		name    string
		reply   func(ch ssh.Channel)
		wantErr error
	}{
		{"endless line", func(ch ssh.Channel) {
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			for range 512 { // 32 MiB, no newline
				if _, err := ch.Write(chunk); err != nil {
					return
				}
			}
		}, guest.ErrProcProtocol},
		{"not json", func(ch ssh.Channel) { io.WriteString(ch, "hello\n") }, guest.ErrProcProtocol},
		{"no reply", func(ssh.Channel) {}, guest.ErrProcProtocol},
		{"huge error message", func(ch ssh.Channel) {
			io.WriteString(ch, `{"error":{"kind":"not_found","message":"`+strings.Repeat("m", 1<<20)+`"}}`+"\n")
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := hostileAgent(t, tt.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err = c.Procs(ctx)
			runtime.GC()
			runtime.ReadMemStats(&after)
			if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
				t.Errorf("heap grew %d bytes", grew)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			var ce *guest.CommandError
			if tt.wantErr == nil && (!errors.As(err, &ce) || len(ce.Message) > 4<<10) {
				t.Fatalf("err = %.200v, want a CommandError of at most 4 KiB", err)
			}
		})
	}
}

// TestExecArgvHostileError: an agent's error report is bounded too.
func TestExecArgvHostileError(t *testing.T) {
	for _, msg := range []string{strings.Repeat("e", 100<<10), "not json", `{"kind":"not_found","message":"no such program"}`} {
		g := hostileAgent(t, func(ch ssh.Channel) {
			ch.SendRequest("error@smolvm", false, ssh.Marshal(struct{ S string }{msg}))
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Exec(ctx, guest.ExecRequest{Argv: []string{"x"}})
		var ce *guest.CommandError
		if !errors.As(err, &ce) || len(ce.Message) > 4<<10 {
			t.Errorf("%.40q: err = %.200v, want a bounded CommandError", msg, err)
		}
		c.Close()
		cancel()
	}
}

// TestProcHostileList: a list reply just under the line bound, made of
// tiny records or tiny argv words, must not make the host allocate many
// times the line's size before it can count what it got.
func TestProcHostileList(t *testing.T) {
	const line = 7 << 20
	tests := []struct {
		name  string
		reply string
	}{
		{"millions of records", `{"procs":[{}` + strings.Repeat(`,{}`, line/3) + "]}\n"},
		{"millions of argv words", `{"procs":[{"id":"p1","argv":[""` + strings.Repeat(`,""`, line/3) + "]}]}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := hostileAgent(t, func(ch ssh.Channel) { io.WriteString(ch, tt.reply) })
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = c.Procs(ctx)
			runtime.ReadMemStats(&after)
			// Carrying any 7 MiB reply costs about 80 MiB here (both SSH
			// ends run in this process, and the line is buffered); decoded
			// whole, these two cost 2.3 GiB and 260 MiB.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 160<<20 {
				t.Errorf("Procs allocated %d MiB for a %d MiB reply", alloc>>20, line>>20)
			}
			if !errors.Is(err, guest.ErrProcProtocol) {
				t.Fatalf("err = %.200v, want ErrProcProtocol", err)
			}
		})
	}
}

// TestFSHostileList: the same for a smolvm-fs listing, whose replies may
// be 32 MiB.
func TestFSHostileList(t *testing.T) {
	const line = 30 << 20
	g := hostileAgent(t, func(ch ssh.Channel) {
		io.WriteString(ch, `{"entries":[{}`+strings.Repeat(`,{}`, line/3)+"]}")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = c.FSList(ctx, "/", 0)
	runtime.ReadMemStats(&after)
	t.Logf("FSList allocated %d MiB", (after.TotalAlloc-before.TotalAlloc)>>20)
	// Carrying 30 MiB costs about 270 MiB here; decoded whole it cost 4.5 GiB.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 600<<20 {
		t.Errorf("FSList allocated %d MiB for a %d MiB reply", alloc>>20, line>>20)
	}
	if !errors.Is(err, guest.ErrUnsafe) {
		t.Fatalf("err = %.200v, want ErrUnsafe", err)
	}
}
