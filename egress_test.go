package smolvm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/egress"
	"github.com/smolvm/smolvm/internal/network"
)

// The egress test's world, in a network namespace of its own behind a
// veth, as the internet is behind a router: a link network (private),
// and routed through it a DNS server the test runs (the VM's upstream)
// and TCP servers on documentation addresses (public for the default
// perimeter) and on a private one. The veth also carries a network the
// host is directly on, its stand-in LAN. Nothing else is ever a target.
const (
	egHostIP    = "10.213.78.1"     // host end of the veth (link network)
	egPeerIP    = "10.213.78.2"     // the namespace's end
	egDNSIP     = "198.51.100.2"    // DNS server
	egOKIP      = "198.51.100.3"    // what ok.test resolves to
	egOtherIP   = "198.51.100.4"    // another host: never resolved for an allowed name
	egPrivateIP = "10.213.77.2"     // a host on a private range
	egPrivNet   = "10.213.77.0/24"  //
	egTestNet   = "198.51.100.0/25" // the routed servers
	egLANHostIP = "198.51.100.129"  // the host on its LAN
	egLANIP     = "198.51.100.130"  // a neighbour on that LAN
	egLANNet    = "198.51.100.128/25"
)

type egressWorld struct {
	ns       string
	upstream string        // the DNS server, ADDR:PORT
	queries  *atomic.Int64 // queries it received
}

func newEgressWorld(t *testing.T) *egressWorld {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("egress test skipped: needs root for network namespaces and TAP devices")
	}
	name, veth, sh := vethNamespace(t, "egr")
	sh("addr", "add", egHostIP+"/30", "dev", veth)
	sh("addr", "add", egLANHostIP+"/25", "dev", veth)
	sh("link", "set", veth, "up")
	// Replies to the VM arrive on the veth, which is no default route's
	// interface: smolvm turns forwarding on only there (see
	// docs/networking.md), so the test does it for its own device.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+veth+"/forwarding", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{egPeerIP + "/30", egLANIP + "/25", egDNSIP + "/32", egOKIP + "/32", egOtherIP + "/32", egPrivateIP + "/32"} {
		sh("-n", name, "addr", "add", a, "dev", "eth0")
	}
	sh("-n", name, "link", "set", "eth0", "up")
	sh("-n", name, "link", "set", "lo", "up")
	sh("-n", name, "route", "add", "default", "via", egHostIP)
	// Routed, not on a network of the host's: both go with the veth.
	sh("route", "add", egTestNet, "via", egPeerIP, "dev", veth)
	sh("route", "add", egPrivNet, "via", egPeerIP, "dev", veth)
	for ip, banner := range map[string]string{egOKIP: "ok-host", egOtherIP: "other-host", egPrivateIP: "private-host", egLANIP: "lan-host"} {
		ln := listenInNetns(t, name, ip+":8080")
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, banner)
				c.Close()
			}
		}()
	}
	w := &egressWorld{ns: name, upstream: egDNSIP + ":53", queries: new(atomic.Int64)}
	pc := listenPacketInNetns(t, name, w.upstream)
	t.Cleanup(func() { pc.Close() })
	go serveTestDNS(pc, w.queries, map[string][]dnsmessage.Resource{
		"ok.test.":  {aRecord("ok.test.", egOKIP)},
		"bad.test.": {aRecord("bad.test.", egOtherIP)},
		// A hostile upstream adds records for a name nobody asked for.
		"stuffed.test.": {aRecord("stuffed.test.", egOKIP), aRecord("other.test.", egOtherIP)},
		"priv.test.":    {aRecord("priv.test.", egPrivateIP)},
	})
	return w
}

func aRecord(name, ip string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 300},
		Body:   &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()},
	}
}

// serveTestDNS answers A queries from zone (NXDOMAIN otherwise).
func serveTestDNS(pc net.PacketConn, queries *atomic.Int64, zone map[string][]dnsmessage.Resource) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		queries.Add(1)
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
			continue
		}
		m.Header.Response, m.Header.RecursionAvailable = true, true
		recs, ok := zone[strings.ToLower(m.Questions[0].Name.String())]
		if !ok {
			m.Header.RCode = dnsmessage.RCodeNameError
		}
		if m.Questions[0].Type == dnsmessage.TypeA {
			m.Answers = recs
		}
		if out, err := m.Pack(); err == nil {
			pc.WriteTo(out, from)
		}
	}
}

func listenPacketInNetns(t *testing.T, name, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := inNetns(t, name, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// keepBase rewrites the firewall's shared rules every 250ms until the test
// ends (see TestEgressPolicy).
func keepBase(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				network.NewFirewall(0).EnsureBase()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestEgressPolicy boots one TAP VM with a domain allowance and an
// upstream the test runs, and checks the policy subtest by subtest,
// changing it at runtime.
func TestEgressPolicy(t *testing.T) {
	requireVM(t)
	w := newEgressWorld(t)
	ctx := testContext(t, 6*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{
		Egress:      smolvm.EgressPolicy{AllowDomains: []string{"ok.test", "stuffed.test"}},
		DNSUpstream: w.upstream,
	}, smolvm.WithNetwork(smolvm.NetworkTAP))
	startVM(t, ctx, vm) // its keeper runs its resolver (cmd/smolvm/dnsduty.go)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SMOLVM_TEST_DNS_DEBUG") != "" {
			b, _ := os.ReadFile(filepath.Join(vm.DataDir(), "keeper.log"))
			t.Logf("keeper log:\n%s", b)
		}
	})
	tag := vm.Info().Process
	gw := vm.Info().Network.Gateway

	// The table is host-wide, and a smolvm of another build starting a
	// VM meanwhile rewrites its shared rules, without the jump to the
	// per-VM input rules that let DNS reach the resolver: put them back
	// before each check, and keep doing it while the test runs.
	ensureBase := func(t *testing.T) {
		t.Helper()
		if err := network.NewFirewall(0).EnsureBase(); err != nil {
			t.Fatal(err)
		}
	}
	keepBase(t)
	// A connection that is dropped is given 2s, one that works 5s (a
	// loaded machine under emulation).
	get := func(t *testing.T, target string, wait int) string {
		t.Helper()
		ensureBase(t)
		host, port, _ := strings.Cut(target, ":")
		return run(t, ctx, vm, fmt.Sprintf("nc -w %d %s %s </dev/null 2>&1", wait, host, port)).Stdout
	}
	resolve := func(t *testing.T, name string) string {
		t.Helper()
		ensureBase(t)
		return run(t, ctx, vm, "nslookup "+name+" 2>&1").Stdout
	}
	// resolves retries: while another build's smolvm rewrote the shared
	// rules (see keepBase) a query may be lost.
	resolves := func(t *testing.T, name, want string) string {
		t.Helper()
		var out string
		for range 3 {
			if out = resolve(t, name); strings.Contains(out, want) {
				break
			}
		}
		return out
	}
	reaches := func(t *testing.T, target, banner string) {
		t.Helper()
		if out := get(t, target, 5); !strings.Contains(out, banner) {
			t.Errorf("%s: %q, want %q", target, out, banner)
		}
	}
	dropped := func(t *testing.T, target string) {
		t.Helper()
		if out := get(t, target, 2); strings.Contains(out, "-host") {
			t.Errorf("%s reached: %q", target, out)
		}
	}
	set := func(t *testing.T, p smolvm.EgressPolicy) {
		t.Helper()
		if err := vm.SetEgressPolicy(ctx, p); err != nil {
			t.Fatalf("SetEgressPolicy(%+v): %v", p, err)
		}
	}

	t.Run("guest resolver is the gateway", func(t *testing.T) {
		if out := run(t, ctx, vm, "cat /etc/resolv.conf").Stdout; !strings.Contains(out, "nameserver "+gw) {
			t.Errorf("resolv.conf: %q, want nameserver %s", out, gw)
		}
	})
	t.Run("allowed domain", func(t *testing.T) {
		if out := resolves(t, "ok.test", egOKIP); !strings.Contains(out, egOKIP) {
			t.Errorf("nslookup ok.test: %q", out)
		}
		reaches(t, "ok.test:8080", "ok-host")
	})
	t.Run("refused domain", func(t *testing.T) {
		before := w.queries.Load()
		if out := resolve(t, "bad.test"); strings.Contains(out, egOtherIP) {
			t.Errorf("nslookup bad.test resolved: %q", out)
		}
		if n := w.queries.Load() - before; n != 0 {
			t.Errorf("a refused name reached the upstream (%d queries)", n)
		}
		dropped(t, "bad.test:8080")
	})
	t.Run("unresolved address", func(t *testing.T) {
		dropped(t, egOtherIP+":8080")
	})
	t.Run("stuffed answer", func(t *testing.T) {
		if out := resolves(t, "stuffed.test", egOKIP); !strings.Contains(out, egOKIP) || strings.Contains(out, egOtherIP) {
			t.Errorf("nslookup stuffed.test: %q", out)
		}
		dropped(t, egOtherIP+":8080")
		got, err := network.NewFirewall(0).Resolved(tag)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			if a.String() != egOKIP {
				t.Errorf("resolved set holds %s", a)
			}
		}
	})
	t.Run("host services stay closed", func(t *testing.T) {
		port := serveLine(t, "0.0.0.0:0", "host-service")
		if res := run(t, ctx, vm, fmt.Sprintf("nc -w 2 %s %d </dev/null", gw, port)); strings.Contains(res.Stdout, "host-service") {
			t.Error("the VM reached a host service on its gateway")
		}
	})
	t.Run("allow cidr", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}, AllowCIDRs: []string{egOtherIP}})
		reaches(t, egOtherIP+":8080", "other-host")
		dropped(t, egPrivateIP+":8080")
	})
	t.Run("deny inside allow", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowCIDRs: []string{egTestNet}, DenyCIDRs: []string{egOtherIP + "/32"}})
		reaches(t, egOKIP+":8080", "ok-host")
		dropped(t, egOtherIP+":8080")
	})
	t.Run("runtime flip", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}})
		reaches(t, "ok.test:8080", "ok-host")
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"stuffed.test"}})
		if out := resolve(t, "ok.test"); strings.Contains(out, egOKIP) {
			t.Errorf("ok.test still resolves after it was disallowed: %q", out)
		}
		dropped(t, egOKIP+":8080") // resolved before, forgotten now
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}})
		reaches(t, "ok.test:8080", "ok-host")
		if p := vm.EgressPolicy(); len(p.AllowDomains) != 1 || p.AllowDomains[0] != "ok.test" {
			t.Errorf("EgressPolicy() = %+v", p)
		}
	})
	t.Run("no egress", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{NoEgress: true})
		if out := resolve(t, "ok.test"); strings.Contains(out, egOKIP) {
			t.Errorf("resolved with no egress: %q", out)
		}
		dropped(t, egOKIP+":8080")
	})
	t.Run("default perimeter", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{})
		reaches(t, egOtherIP+":8080", "other-host") // public (a documentation range)
		dropped(t, egPrivateIP+":8080")             // private: only when allowed
		if out := resolve(t, "priv.test"); strings.Contains(out, egPrivateIP) {
			t.Errorf("the resolver handed out a private address: %q", out)
		}
		dropped(t, egLANIP+":8080") // the host's LAN, though on public-looking addresses
		set(t, smolvm.EgressPolicy{AllowCIDRs: []string{egPrivNet, egLANNet}})
		reaches(t, egPrivateIP+":8080", "private-host")
		reaches(t, egLANIP+":8080", "lan-host")
	})
	t.Run("invalid policy", func(t *testing.T) {
		for _, p := range []smolvm.EgressPolicy{
			{AllowCIDRs: []string{"fd00::/8"}},
			{AllowCIDRs: []string{"10.1.2.3/8"}},
			{DenyCIDRs: []string{"nonsense"}},
			{AllowDomains: []string{"a.*.test"}},
			{NoEgress: true, AllowDomains: []string{"ok.test"}},
		} {
			if err := vm.SetEgressPolicy(ctx, p); !errors.Is(err, smolvm.ErrInvalid) {
				t.Errorf("SetEgressPolicy(%+v): %v, want ErrInvalid", p, err)
			}
		}
	})
	// The hostile guest's DNS client (testdata/dnsflood), built once.
	uploaded := false
	upload := func(t *testing.T) {
		t.Helper()
		if uploaded {
			return
		}
		bin := filepath.Join(t.TempDir(), "dnsflood")
		build := exec.Command("go", "build", "-o", bin, "./testdata/dnsflood")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build dnsflood: %v\n%s", err, out)
		}
		if err := vm.Upload(ctx, bin, "/root/dnsflood"); err != nil {
			t.Fatal(err)
		}
		uploaded = true
	}
	t.Run("latency", func(t *testing.T) {
		var took []time.Duration
		for i := range 5 {
			p := smolvm.EgressPolicy{AllowDomains: []string{"ok.test", fmt.Sprintf("n%d.test", i)}}
			start := time.Now()
			set(t, p)
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		t.Logf("SetEgressPolicy on a running VM: median %v of %d", took[len(took)/2], len(took))
		upload(t)
		ensureBase(t)
		for _, name := range []string{"ok.test", "bad.test"} {
			res := run(t, ctx, vm, fmt.Sprintf("/root/dnsflood -bench %s:53 21 %s", gw, name))
			t.Logf("DNS round trip from the guest, %s: %s", name, strings.TrimSpace(res.Stdout+res.Stderr))
		}
	})
	t.Run("hostile flood", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}})
		upload(t)
		before := w.queries.Load()
		const secs = 4
		ensureBase(t)
		res := run(t, ctx, vm, fmt.Sprintf("/root/dnsflood %s:53 %d ok.test", gw, secs))
		t.Logf("guest: %s", strings.TrimSpace(res.Stdout+res.Stderr))
		// The rate limit lets through its burst and refill: the upstream
		// sees a bounded number of queries, whatever the guest sent.
		bound := int64(egress.DefaultBurst + egress.DefaultRate*(secs+2))
		if got := w.queries.Load() - before; got > bound {
			t.Errorf("the upstream got %d queries during the flood, want at most %d", got, bound)
		}
		// And the resolver still answers.
		if out := resolves(t, "ok.test", egOKIP); !strings.Contains(out, egOKIP) {
			t.Errorf("after the flood: %q", out)
		}
	})
	t.Run("keeper killed", func(t *testing.T) {
		// The resolver lives in the VM's keeper: killed by -9, the next
		// look at the VM starts another, and names resolve again.
		b, err := os.ReadFile(filepath.Join(vm.DataDir(), "keeper.pid"))
		if err != nil {
			t.Fatalf("keeper pid file: %v", err)
		}
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 1 {
			t.Fatalf("keeper pid file %q: %v", b, err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond) // until the kernel has reaped it
		}
		again, err := smolvm.FromID(ctx, vm.ID())
		if err != nil {
			t.Fatal(err)
		}
		again.Close()
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}})
		if out := resolves(t, "ok.test", egOKIP); !strings.Contains(out, egOKIP) {
			t.Errorf("after the keeper's restart: %q", out)
		}
	})
	t.Run("fork keeps the policy", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}})
		kids, err := vm.Fork(ctx, 1)
		if err != nil {
			t.Fatalf("fork: %v", err)
		}
		kid := kids[0]
		t.Cleanup(func() { kid.Delete(context.Background()) })
		if p := kid.EgressPolicy(); len(p.AllowDomains) != 1 || p.AllowDomains[0] != "ok.test" {
			t.Errorf("the fork's policy: %+v", p)
		}
		kgw := kid.Info().Network.Gateway
		if out := run(t, ctx, kid, "cat /etc/resolv.conf").Stdout; !strings.Contains(out, "nameserver "+kgw+"\n") {
			t.Errorf("the fork's resolv.conf: %q, want nameserver %s (its own gateway)", out, kgw)
		}
		ensureBase(t)
		if out := run(t, ctx, kid, "nc -w 5 ok.test 8080 </dev/null 2>&1").Stdout; !strings.Contains(out, "ok-host") {
			t.Errorf("the fork to ok.test: %q", out)
		}
		if out := run(t, ctx, kid, "nc -w 2 "+egOtherIP+" 8080 </dev/null 2>&1").Stdout; strings.Contains(out, "-host") {
			t.Errorf("the fork reached %s: %q", egOtherIP, out)
		}
	})
	t.Run("survives restart", func(t *testing.T) {
		if err := vm.Stop(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(vm.DataDir(), egress.SpecFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("resolver spec left after stop: %v", err)
		}
		again, err := smolvm.FromID(ctx, vm.ID())
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close()
		if p := again.EgressPolicy(); len(p.AllowDomains) != 1 || p.AllowDomains[0] != "ok.test" {
			t.Errorf("stored policy after stop: %+v", p)
		}
		if got := again.Info().Config.DNSUpstream; got != w.upstream {
			t.Errorf("stored upstream %q", got)
		}
	})
}
