package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/server"
)

// TestUnauthenticatedSlowBody: a client without the token that sends
// headers promising a body and then trickles it (or nothing) is answered
// 401 and cut off within seconds; it holds no connection open, so it
// cannot keep an idle server alive or pile up connections.
func TestUnauthenticatedSlowBody(t *testing.T) {
	token := "s3cret-token-of-the-test-0123456789"
	l, err := server.ListenTCP("127.0.0.1:0", token, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Home: t.TempDir(), Agent: testEnv.agent})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, 0, l) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })

	for _, length := range []int{1000, 100 << 10, 10 << 20} {
		t.Run(fmt.Sprint(length), func(t *testing.T) {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /v1/vms HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", length)
			start := time.Now()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil || line[:12] != "HTTP/1.1 401" {
				t.Fatalf("answer %q, %v; want 401", line, err)
			}
			// Trickle the body; the server must hang up.
			for {
				if _, err := c.Write([]byte(" ")); err != nil {
					break
				}
				if _, err := br.ReadByte(); err != nil && !isTimeout(err) {
					break
				}
				if time.Since(start) > 20*time.Second {
					t.Fatal("the server kept a connection without the token open for 20 s")
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("cut off after %s", took)
			}
		})
	}
	// Let the server notice the closed connections.
	deadline := time.Now().Add(10 * time.Second)
	for srv.IdleFor() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if srv.IdleFor() == 0 {
		t.Error("the server still counts the unauthenticated connections as open")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
