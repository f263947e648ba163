package smolvm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/network"
)

// serveHello starts a TCP server in the guest that answers "hello".
func serveHello(t *testing.T, ctx context.Context, vm *smolvm.VM, port int) {
	t.Helper()
	cmd := fmt.Sprintf("nohup sh -c 'while true; do echo hello-from-guest | nc -l -p %d; done' >/dev/null 2>&1 &", port)
	run(t, ctx, vm, cmd)
}

// dialHello connects to addr until it answers or the deadline passes.
func dialHello(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			b, err := io.ReadAll(c)
			c.Close()
			if err == nil && strings.Contains(string(b), "hello-from-guest") {
				return nil
			}
			last = fmt.Errorf("read %q: %v", b, err)
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: %w", addr, last)
}

func TestExposePorts(t *testing.T) {
	for _, mode := range []string{smolvm.NetworkUser, smolvm.NetworkTAP} {
		t.Run(mode, func(t *testing.T) {
			ctx := testContext(t, 4*time.Minute)
			vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(mode))
			// One forward made before start, one while running.
			before, err := vm.Expose(ctx, 8001, 0)
			if err != nil {
				t.Fatal(err)
			}
			startVM(t, ctx, vm)
			after, err := vm.Expose(ctx, 8002, 0)
			if err != nil {
				t.Fatal(err)
			}
			if before.HostAddr != "127.0.0.1" || before.HostPort == 0 {
				t.Fatalf("forward = %+v, want 127.0.0.1 and a picked port", before)
			}
			if _, err := vm.Expose(ctx, 9999, after.HostPort); !errors.Is(err, smolvm.ErrAlreadyExists) {
				t.Fatalf("exposing a taken host port: %v", err)
			}
			for _, bad := range []int{0, 70000} {
				if _, err := vm.Expose(ctx, bad, 0); !errors.Is(err, smolvm.ErrInvalid) {
					t.Fatalf("guest port %d: %v", bad, err)
				}
			}
			serveHello(t, ctx, vm, 8001)
			serveHello(t, ctx, vm, 8002)
			for _, f := range []smolvm.PortForward{before, after} {
				if err := dialHello(fmt.Sprintf("127.0.0.1:%d", f.HostPort), 20*time.Second); err != nil {
					t.Fatalf("forward %+v: %v", f, err)
				}
			}
			// Forwards survive stop and start.
			if err := vm.Stop(ctx, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			startVM(t, ctx, vm)
			serveHello(t, ctx, vm, 8002)
			if err := dialHello(fmt.Sprintf("127.0.0.1:%d", after.HostPort), 20*time.Second); err != nil {
				t.Fatalf("after restart: %v", err)
			}
			if err := vm.Unexpose(ctx, "", after.HostPort); err != nil {
				t.Fatal(err)
			}
			if err := dialHello(fmt.Sprintf("127.0.0.1:%d", after.HostPort), time.Second); err == nil {
				t.Fatal("port still forwarded after Unexpose")
			}
			fs, err := vm.Forwards(ctx)
			if err != nil || len(fs) != 1 || fs[0] != before {
				t.Fatalf("forwards = %+v, %v; want only %+v", fs, err, before)
			}
		})
	}
}

// TestExposeHostChecks: a forward never takes over a port a host program
// listens on (DNAT would run before its socket), at Expose and again at
// start, and never names an address the host does not have.
func TestExposeHostChecks(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the takeover happens with TAP networking")
	}
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkTAP))
	listen := func(addr string) (net.Listener, int) {
		t.Helper()
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln, ln.Addr().(*net.TCPAddr).Port
	}

	for _, tt := range []struct{ listen, expose string }{
		{"127.0.0.1:0", "127.0.0.1"},
		{"0.0.0.0:0", "127.0.0.1"}, // a wildcard listener holds every address
		{"127.0.0.1:0", "0.0.0.0"},
	} {
		_, port := listen(tt.listen)
		_, err := vm.Expose(ctx, 80, port, smolvm.OnHostAddr(tt.expose))
		if !errors.Is(err, smolvm.ErrAlreadyExists) || !strings.Contains(err.Error(), fmt.Sprint(port)) {
			t.Errorf("expose %s:%d with a host server on %s: %v; want a refusal naming the port", tt.expose, port, tt.listen, err)
		}
	}
	for _, remote := range []string{"198.51.100.7", "203.0.113.9"} {
		_, err := vm.Expose(ctx, 80, 18080, smolvm.OnHostAddr(remote))
		var ve *smolvm.ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("expose on %s, not a host address: %v; want a ValidationError", remote, err)
		}
	}
	if fs, err := vm.Forwards(ctx); err != nil || len(fs) != 0 {
		t.Fatalf("refused forwards were kept: %+v, %v", fs, err)
	}

	// Free at Expose, taken by the time the VM starts.
	f, err := vm.Expose(ctx, 80, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := listen(fmt.Sprintf("127.0.0.1:%d", f.HostPort))
	err = vm.Start(ctx)
	if !errors.Is(err, smolvm.ErrAlreadyExists) || !strings.Contains(err.Error(), fmt.Sprint(f.HostPort)) {
		t.Fatalf("start with host port %d taken: %v; want a refusal naming the port", f.HostPort, err)
	}
	if vm.Info().Network.TAP != "" && network.TAPExists(vm.Info().Network.TAP) {
		t.Errorf("failed start left TAP %s", vm.Info().Network.TAP)
	}
	ln.Close()
}
