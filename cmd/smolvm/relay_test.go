package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEgressRelay runs the relay as QEMU does: its stdin, stdout and
// stderr one socket, the guest's end of which the test holds; the proxy's
// side is a unix socket the test serves.
func TestEgressRelay(t *testing.T) {
	for _, tt := range []struct {
		name  string
		proxy func(c net.Conn)
		guest func(t *testing.T, g *os.File) string
		want  string
		quick bool // the relay must end well before the guest does
	}{
		{
			name:  "refused unheard ends at once",
			proxy: func(c net.Conn) { c.Close() },
			guest: func(t *testing.T, g *os.File) string { b, _ := io.ReadAll(g); return string(b) }, // never closes its side
			want:  "", quick: true,
		},
		{
			name: "both ways",
			proxy: func(c net.Conn) {
				b := make([]byte, 5)
				io.ReadFull(c, b)
				c.Write(append([]byte("got "), b...))
				c.Close()
			},
			guest: func(t *testing.T, g *os.File) string { g.WriteString("hello"); b, _ := io.ReadAll(g); return string(b) },
			want:  "got hello",
		},
		{
			name: "the guest half-closes and waits for its answer",
			proxy: func(c net.Conn) {
				b, _ := io.ReadAll(c) // until the guest's half-close
				time.Sleep(1500 * time.Millisecond)
				c.Write([]byte("late " + string(b)))
				c.Close()
			},
			guest: func(t *testing.T, g *os.File) string {
				g.WriteString("req")
				syscall.Shutdown(int(g.Fd()), syscall.SHUT_WR)
				b, _ := io.ReadAll(g)
				return string(b)
			},
			want: "late req",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				if c, err := ln.Accept(); err == nil {
					tt.proxy(c)
				}
			}()
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0) // the guest end must not leak into the relay
			if err != nil {
				t.Fatal(err)
			}
			guest, relayEnd := os.NewFile(uintptr(fds[0]), "guest"), os.NewFile(uintptr(fds[1]), "relay")
			defer guest.Close()
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "SMOLVM_TEST_RELAY="+sock)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = relayEnd, relayEnd, relayEnd
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			relayEnd.Close()
			began := time.Now()
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			if tt.quick {
				select {
				case <-exited:
				case <-time.After(5 * time.Second):
					t.Fatal("the relay outlived a connection the proxy refused unheard")
				}
			}
			guest.SetReadDeadline(time.Now().Add(20 * time.Second))
			if got := tt.guest(t, guest); strings.TrimSpace(got) != tt.want {
				t.Errorf("guest got %q, want %q", got, tt.want)
			}
			guest.Close()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatal("the relay did not exit")
			}
			t.Logf("relay ran %v", time.Since(began).Round(time.Millisecond))
		})
	}
}
