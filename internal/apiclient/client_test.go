package apiclient

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// serve runs the real API handler on a UNIX socket and on loopback TCP
// (the TCP one behind token), as `smolvm serve` does, for the test's life.
func serve(t *testing.T, token string) (unixHost, tcpHost, home string) {
	t.Helper()
	home = t.TempDir()
	srv := server.New(server.Config{Home: home})
	t.Cleanup(func() { srv.Close() })
	sock := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct {
		l     net.Listener
		token string
	}{{ul, ""}, {tl, token}} {
		hs := &http.Server{Handler: srv.Handler(l.token)}
		go hs.Serve(l.l)
		t.Cleanup(func() { hs.Close() })
	}
	return "unix://" + sock, "tcp://" + tl.Addr().String(), home
}

func TestNewHost(t *testing.T) {
	for _, tt := range []struct {
		host string
		ok   bool
	}{
		{"unix:///run/smolvm.sock", true},
		{"tcp://127.0.0.1:7070", true},
		{"tcp://[::1]:7070", true},
		{"tcp://127.0.0.1", false}, // no port
		{"tcp://127.0.0.1:7070/v1", false},
		{"unix://", false},
		{"unix://host/x.sock", false},
		{"http://127.0.0.1:7070", false},
		{"/run/smolvm.sock", false},
		{"", false},
	} {
		_, err := New(tt.host, "")
		if (err == nil) != tt.ok {
			t.Errorf("New(%q): error %v, want ok=%v", tt.host, err, tt.ok)
		}
		if err != nil && !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("New(%q): %v does not match smolvm.ErrInvalid", tt.host, err)
		}
	}
}

// TestErrorsMatchTheSDK checks that what the real server reports comes
// back as the SDK's sentinels, and that refused requests change nothing.
func TestErrorsMatchTheSDK(t *testing.T) {
	const token = "s3cret-token"
	unixHost, tcpHost, _ := serve(t, token)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	uc, err := New(unixHost, "")
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := New(tcpHost, token)
	bad, _ := New(tcpHost, "wrong")
	none, _ := New(tcpHost, "")

	if h, err := tc.Health(ctx); err != nil || h.API != api.Version {
		t.Fatalf("health over TCP with the token: %+v, %v", h, err)
	}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"no such VM", func() error { _, err := uc.VM(ctx, "nope"); return err }, smolvm.ErrNotFound},
		{"delete no such VM", func() error { return uc.DeleteVM(ctx, "nope") }, smolvm.ErrNotFound},
		{"exec in no such VM", func() error { _, err := uc.Exec(ctx, "nope", api.Exec{Cmd: "true"}); return err }, smolvm.ErrNotFound},
		{"streamed exec in no such VM", func() error {
			_, err := uc.ExecStream(ctx, "nope", api.Exec{Cmd: "true"}, Stdio{})
			return err
		}, smolvm.ErrNotFound},
		{"no such snapshot", func() error { _, err := uc.GetSnapshot(ctx, "nope"); return err }, smolvm.ErrNotFound},
		{"no such image", func() error { _, err := uc.Image(ctx, "nope"); return err }, smolvm.ErrNotFound},
		{"negative memory", func() error { _, err := uc.CreateVM(ctx, api.CreateVM{ID: "neg", MemoryMiB: -1}); return err }, smolvm.ErrInvalid},
		{"bad id", func() error { _, err := uc.CreateVM(ctx, api.CreateVM{ID: "../x"}); return err }, smolvm.ErrInvalid},
		{"empty command", func() error { _, err := uc.Exec(ctx, "nope", api.Exec{Cmd: " "}); return err }, smolvm.ErrInvalid},
		{"wrong token", func() error { _, err := bad.CreateVM(ctx, api.CreateVM{ID: "evil"}); return err }, ErrUnauthorized},
		{"no token", func() error { _, err := none.ListVMs(ctx, "", ""); return err }, ErrUnauthorized},
	}
	for _, tt := range tests {
		err := tt.call()
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: error %v, want one matching %v", tt.name, err, tt.want)
		}
		var ae *Error
		if !errors.As(err, &ae) || ae.Message == "" {
			t.Errorf("%s: %v is not a server *Error with a message", tt.name, err)
		}
	}
	var ae *Error
	if _, err := bad.ListVMs(ctx, "", ""); !errors.As(err, &ae) || !strings.Contains(ae.Error(), "--token") {
		t.Errorf("a wrong token's error %v does not say how to give the right one", err)
	}
	vms, err := uc.ListVMs(ctx, "", "")
	if err != nil || len(vms) != 0 {
		t.Errorf("after refused requests: VMs %+v, %v; want none", vms, err)
	}
}

func TestUnreachable(t *testing.T) {
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "tcp://" + l.Addr().String()
	l.Close()
	for _, host := range []string{"unix://" + filepath.Join(t.TempDir(), "none.sock"), closed} {
		c, err := New(host, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ListVMs(ctx, "", "")
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "smolvm serve") {
			t.Errorf("%s: error %v; want ErrUnreachable naming the host and `smolvm serve`", host, err)
		}
	}
}

// TestNotASmolvmServer: another program on the port answers, not with the
// API's errors; the client says so instead of inventing a code.
func TestNotASmolvmServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "bad gateway", http.StatusBadGateway)
	})}
	go hs.Serve(l)
	defer hs.Close()
	c, _ := New("tcp://"+l.Addr().String(), "")
	_, err = c.VM(context.Background(), "x")
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInternal || !strings.Contains(err.Error(), "not a smolvm API error") {
		t.Errorf("error %v; want an internal *Error saying the answer is not the API's", err)
	}
}
