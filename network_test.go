package smolvm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/network"
)

// outsideHost is a network namespace the test builds to stand for the
// internet: a veth from the host, and an HTTP server inside.
type outsideHost struct {
	addr string // the server's address, host:port
	ns   string // the namespace's name
	// linkLocal is a server on a link-local address (a stand-in for a
	// cloud metadata service) in the namespace, routed there by the host.
	linkLocal string
}

const (
	// The outside is behind a router, as the internet is: a link network
	// between the host and the namespace, and the server on a
	// documentation range (TEST-NET-3) routed through it. That range is
	// public as far as the default egress perimeter goes; a network the
	// host is directly on (its LAN) is not.
	outsideHostIP   = "10.213.90.1" // host end of the veth: the masquerading source
	outsideLinkPeer = "10.213.90.2" // the namespace's end
	outsideFarIP    = "203.0.113.2" // the outside server's address
	outsideLinkIP   = "169.254.77.1"
	outsidePayload  = 50 << 20
)

func newOutsideHost(t *testing.T) *outsideHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network test skipped: needs root for network namespaces and TAP devices")
	}
	name, veth, sh := vethNamespace(t, "out")
	sh("addr", "add", outsideHostIP+"/30", "dev", veth)
	sh("link", "set", veth, "up")
	// Replies to the VMs arrive on the veth, no default route's
	// interface, where smolvm does not turn forwarding on (see
	// docs/networking.md): the test does, for its own device.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+veth+"/forwarding", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh("-n", name, "addr", "add", outsideLinkPeer+"/30", "dev", "eth0")
	sh("-n", name, "addr", "add", outsideFarIP+"/32", "dev", "eth0")
	sh("-n", name, "link", "set", "eth0", "up")
	sh("-n", name, "link", "set", "lo", "up")
	sh("-n", name, "route", "add", "default", "via", outsideHostIP)
	sh("-n", name, "addr", "add", outsideLinkIP+"/32", "dev", "eth0")
	// Both go with the veth.
	sh("route", "add", outsideFarIP+"/32", "via", outsideLinkPeer, "dev", veth)
	sh("route", "add", outsideLinkIP+"/32", "via", outsideLinkPeer, "dev", veth)

	ln := listenInNetns(t, name, outsideFarIP+":8080")
	payload := bytes.Repeat([]byte("0123456789abcdef"), outsidePayload/16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(payload)
			return
		}
		fmt.Fprintf(w, "outside says hi to %s\n", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	lln := listenInNetns(t, name, outsideLinkIP+":8080")
	lsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "metadata")
	})}
	go lsrv.Serve(lln)
	t.Cleanup(func() { lsrv.Close() })
	return &outsideHost{addr: outsideFarIP + ":8080", ns: name, linkLocal: outsideLinkIP + ":8080"}
}

// inNetns runs fn on a thread inside the named namespace; sockets fn
// makes stay there.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace changed
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// listenInNetns opens a listener inside the named namespace; the socket
// stays there after the thread switches back.
func listenInNetns(t *testing.T, name, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace changed
		ns, err := netns.GetFromName(name)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.ln
}

// TestNetworkEgressAndIsolation boots two TAP VMs, one with egress and one
// without, against an outside host in a namespace of the test's own.
func TestNetworkEgressAndIsolation(t *testing.T) {
	requireVM(t)
	out := newOutsideHost(t)
	ctx := testContext(t, 5*time.Minute)
	a := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkTAP))
	b := newVM(t, ctx, smolvm.VMConfig{NoEgress: true}, smolvm.WithNetwork(smolvm.NetworkTAP))
	startVM(t, ctx, a)
	startVM(t, ctx, b)

	t.Run("egress on", func(t *testing.T) {
		res := run(t, ctx, a, "wget -q -T 5 -O - http://"+out.addr+"/")
		if !strings.Contains(res.Stdout, "outside says hi to "+outsideHostIP) {
			t.Fatalf("A to outside: %+v (want masqueraded to %s)", res, outsideHostIP)
		}
	})
	t.Run("egress off", func(t *testing.T) {
		if res := run(t, ctx, b, "wget -q -T 3 -O - http://"+out.addr+"/"); res.OK() {
			t.Fatalf("B without egress reached the outside: %+v", res)
		}
	})
	t.Run("VM to VM", func(t *testing.T) {
		serveHello(t, ctx, b, 7000)
		serveHello(t, ctx, a, 7000)
		// Each VM reaches its own server, so the servers are up...
		for _, vm := range []*smolvm.VM{a, b} {
			if res := run(t, ctx, vm, "for i in 1 2 3 4 5; do nc 127.0.0.1 7000 </dev/null && exit 0; sleep 1; done; exit 1"); !res.OK() {
				t.Fatalf("%s: own server: %+v", vm.ID(), res)
			}
		}
		// ...but neither reaches the other's.
		for _, p := range [][2]*smolvm.VM{{a, b}, {b, a}} {
			if res := run(t, ctx, p[0], "nc -w 2 "+p[1].IP()+" 7000 </dev/null"); strings.Contains(res.Stdout, "hello") {
				t.Fatalf("%s reached %s's server", p[0].ID(), p[1].ID())
			}
		}
	})
	t.Run("neighbour to guest", func(t *testing.T) {
		// A machine next to the host that routes the VM addresses through
		// it reaches no guest port, with egress or without.
		//
		// The table is host-wide: a smolvm of another build running at the
		// same time may have rewritten its shared rules. Put ours back
		// (idempotent) so this checks this build's rules.
		if err := network.NewFirewall(0).EnsureBase(); err != nil {
			t.Fatal(err)
		}
		for _, vm := range []*smolvm.VM{a, b} {
			if out, err := exec.Command("ip", "-n", out.ns, "route", "replace", vm.IP()+"/32", "via", outsideHostIP).CombinedOutput(); err != nil {
				t.Fatalf("route: %v: %s", err, out)
			}
			err := inNetns(t, out.ns, func() error { return dialHello(vm.IP()+":7000", 3*time.Second) })
			if err == nil {
				t.Fatalf("the outside reached %s's guest port 7000 directly", vm.ID())
			}
		}
	})
	t.Run("link-local", func(t *testing.T) {
		// The host reaches the stand-in metadata server; the guest, with
		// egress, does not.
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + out.linkLocal + "/")
		if err != nil {
			t.Fatalf("host to %s: %v", out.linkLocal, err)
		}
		resp.Body.Close()
		if res := run(t, ctx, a, "wget -q -T 3 -O - http://"+out.linkLocal+"/"); strings.Contains(res.Stdout, "metadata") {
			t.Fatalf("guest reached a link-local address: %+v", res)
		}
	})
	t.Run("host services", func(t *testing.T) {
		port := serveLine(t, "0.0.0.0:0", "host-service")
		host := a.Info().Network.Gateway
		if res := run(t, ctx, a, fmt.Sprintf("nc -w 2 %s %d </dev/null", host, port)); strings.Contains(res.Stdout, "host-service") {
			t.Fatal("a VM reached a host service on its TAP side")
		}
	})
	t.Run("HTTP download from outside", func(t *testing.T) {
		start := time.Now()
		res := run(t, ctx, a, "wget -q -T 30 -O - http://"+out.addr+"/big | wc -c")
		if strings.TrimSpace(res.Stdout) != fmt.Sprint(outsidePayload) {
			t.Fatalf("downloaded %q bytes", res.Stdout)
		}
		d := time.Since(start)
		t.Logf("HTTP download of 50 MiB from the outside host: %v (%.1f MiB/s)", d, 50/d.Seconds())
	})
	t.Run("SIGKILL then delete", func(t *testing.T) {
		info := a.Info()
		if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if network.TAPExists(info.Network.TAP) {
			t.Fatalf("TAP %s left", info.Network.TAP)
		}
		rules, err := network.NewFirewall(0).Rules()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.VMID == a.ID() {
				t.Fatalf("rule left for the deleted VM: %+v", r)
			}
		}
	})
}

// TestUserModeNoHostLoopback: QEMU's slirp maps 10.0.2.2 to the host's
// 127.0.0.1; a user-mode guest must not reach the host's loopback
// services through it, while forwards into the guest still work.
func TestUserModeNoHostLoopback(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkUser))
	port := serveLine(t, "127.0.0.1:0", "host-loopback-service")
	fwd, err := vm.Expose(ctx, 8001, 0)
	if err != nil {
		t.Fatal(err)
	}
	startVM(t, ctx, vm)
	if !strings.Contains(vm.Info().Network.Note, "only through its egress proxy") {
		t.Errorf("network note %q does not say the VM goes out only through its proxy", vm.Info().Network.Note)
	}
	// An egress policy that allows everything opens no direct route: the
	// checks below run under it (the proxy, which never reaches the
	// host's own addresses, is TestEgressProxyUserMode's).
	if err := vm.SetEgressPolicy(ctx, smolvm.EgressPolicy{AllowCIDRs: []string{"0.0.0.0/0"}}); err != nil {
		t.Fatal(err)
	}
	if s := vm.Info().EgressStatus().Summary; !strings.Contains(s, "through the HTTP proxy") {
		t.Errorf("egress status %q does not say a user-mode VM goes out through its proxy", s)
	}
	res := run(t, ctx, vm, fmt.Sprintf("nc -w 3 %s %d </dev/null", network.UserGateway, port))
	if strings.Contains(res.Stdout, "host-loopback-service") {
		t.Fatalf("the guest reached the host's 127.0.0.1:%d through %s", port, network.UserGateway)
	}
	serveHello(t, ctx, vm, 8001)
	if err := dialHello(fmt.Sprintf("127.0.0.1:%d", fwd.HostPort), 20*time.Second); err != nil {
		t.Fatalf("forward into the guest: %v", err)
	}
}

// TestTAPGoneDialFails: once a VM's TAP device is gone, a new connection
// to the guest fails at once and sends nothing: it must not follow another
// route to the guest's address. A test-made route to that address through
// a veth into a test namespace stands for the host's default route; its
// packet counter shows whether anything left that way.
func TestTAPGoneDialFails(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: TAP networking")
	}
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{NoEgress: true}, smolvm.WithNetwork(smolvm.NetworkTAP))
	startVM(t, ctx, vm)
	info := vm.Info()

	name, veth, sh := vethNamespace(t, "wat")
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+veth+"/disable_ipv6", []byte("1"), 0o644); err != nil {
		t.Fatal(err) // quiet: no router solicitations to count
	}
	sh("link", "set", veth, "up")
	sh("-n", name, "link", "set", "eth0", "up") // with carrier, so what is sent is counted
	// The same prefix as the TAP's route, which wins while the TAP exists.
	prefix := netip.MustParsePrefix(info.Network.GuestIP + "/" + fmt.Sprint(info.Network.Prefix)).Masked()
	sh("route", "add", prefix.String(), "dev", veth, "metric", "9999")
	run(t, ctx, vm, "true")

	if err := network.DeleteTAP(info.Network.TAP); err != nil {
		t.Fatal(err)
	}
	tx := func() string {
		b, err := os.ReadFile("/sys/class/net/" + veth + "/statistics/tx_packets")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	before := tx()
	// A new handle has no connection yet: it must dial.
	again, err := smolvm.FromID(ctx, vm.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = again.Run(dctx, "true")
	took := time.Since(start)
	if err == nil {
		t.Fatal("ran a command on a VM whose TAP device is gone")
	}
	t.Logf("after %v: %v", took, err)
	if !errors.Is(err, guest.ErrNoInterface) {
		t.Errorf("error does not say the device is gone: %v", err)
	}
	if took > 5*time.Second {
		t.Errorf("failing took %v, want at once", took)
	}
	time.Sleep(500 * time.Millisecond)
	if after := tx(); after != before {
		t.Errorf("%s sent %s -> %s packets: the dial left through another interface", veth, before, after)
	}
}

// serveLine listens on addr until the test ends, answering each
// connection with line, and returns the port.
func serveLine(t *testing.T, addr, line string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(line + "\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// vethNamespace makes a network namespace of the test's own with a veth
// pair: eth0 inside it, the returned veth on the host; both go when the
// test ends. sh runs `ip` and fails the test on error.
func vethNamespace(t *testing.T, tag string) (ns, veth string, sh func(args ...string)) {
	t.Helper()
	ns = fmt.Sprintf("smoltest-%s-%d", tag, os.Getpid())
	veth = fmt.Sprintf("s%s%d", tag, os.Getpid()%100000)
	sh = func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	sh("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", veth).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
	sh("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	return ns, veth, sh
}

// TestAddressTakenMoves: state directories do not see each other's
// leases, so a VM of another one can take this VM's address while this
// one is not running. Starting it then boots it on a fresh address,
// recorded, instead of failing.
func TestAddressTakenMoves(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	if os.Geteuid() != 0 {
		t.Skip("TAP networking needs root")
	}
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithColdBoot())
	first := vm.Info().Network.GuestIP
	// The same pool, another state directory: its first VM gets the
	// same address, which nothing on the host uses yet.
	other := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithHome(t.TempDir()), smolvm.WithColdBoot())
	if got := other.Info().Network.GuestIP; got != first {
		t.Skipf("the other state directory leased %s, not %s: nothing to collide with", got, first)
	}
	startVM(t, ctx, other)
	startVM(t, ctx, vm)
	moved := vm.Info().Network.GuestIP
	if moved == first {
		t.Fatalf("started on %s, the address the other VM uses", moved)
	}
	for _, v := range []*smolvm.VM{vm, other} {
		if res := run(t, ctx, v, "ip -4 -o addr show eth0"); !strings.Contains(res.Stdout, " "+v.Info().Network.GuestIP+"/") {
			t.Errorf("%s: guest has %q, want %s", v.ID(), res.Stdout, v.Info().Network.GuestIP)
		}
	}
	again, err := smolvm.FromID(ctx, vm.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := again.Info().Network.GuestIP; got != moved {
		t.Errorf("recorded address %s, want %s", got, moved)
	}
}
