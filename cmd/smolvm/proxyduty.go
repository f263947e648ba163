package main

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/egress"
	"github.com/smolvm/smolvm/internal/keeper"
	"github.com/smolvm/smolvm/internal/network"
)

// proxyDuty runs a user-mode VM's egress proxy (internal/egress) for as
// long as the VM runs, on the unix socket its relays connect to. The
// policy is the spec file the SDK writes at each start and policy change
// (egress.ProxySpecFile), read for every connection. A TAP VM has no
// such spec: the duty waits and does nothing.
func proxyDuty(ctx context.Context, kv keeper.VM) error {
	path := filepath.Join(kv.Dir, egress.ProxySpecFile)
	spec, err := egress.ReadSpec(path)
	if errors.Is(err, fs.ErrNotExist) {
		<-ctx.Done()
		return nil
	}
	if err != nil {
		return err
	}
	ln, err := egress.ListenProxy(spec.Listen, spec.Group, spec.Peer)
	if err != nil {
		return err
	}
	defer ln.Close()
	p := &egress.Proxy{
		Spec:     func() (egress.Spec, error) { return egress.ReadSpec(path) },
		HostOrVM: network.HostOrVM,
		LAN:      network.HostNetworks, // read for each connection: a laptop changes networks
		Logger:   kv.Log,
	}
	kv.Log.Info("egress proxy: serving", "socket", spec.Listen)
	return p.Serve(ctx, ln)
}

// relayLinger is how long a relay still passes on the guest's bytes
// after the proxy's side ended (as socat's -t).
const relayLinger = 30 * time.Second

// relay is `smolvm egress-relay SOCKET`, which QEMU runs for each
// connection of a user-mode guest to its egress proxy, as QEMU's user,
// with the connection as stdin, stdout and stderr: it joins them to the
// proxy's socket. It is handled before any command setup (it must start
// fast, and as QEMU's user it has no state directory), and nothing it
// could print may reach the guest.
func relay(socket string) int {
	if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
		unix.Dup2(int(null.Fd()), 2)
	}
	up, err := net.Dial("unix", socket)
	if err != nil {
		return 1
	}
	defer up.Close()
	fromGuest := make(chan struct{})
	go func() {
		io.Copy(up, os.Stdin)
		up.(*net.UnixConn).CloseWrite()
		close(fromGuest)
	}()
	n, _ := io.Copy(os.Stdout, up)
	unix.Shutdown(1, unix.SHUT_WR)
	if n == 0 {
		return 0 // refused unheard (too many at once): no tunnel to keep
	}
	// The proxy is done sending; a half-closed tunnel may still carry
	// the guest's bytes, but a guest must not keep a relay alive for
	// ever on a connection the proxy ended.
	select {
	case <-fromGuest:
	case <-time.After(relayLinger):
	}
	return 0
}
