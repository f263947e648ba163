package network

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"net"

	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// TestFirewall checks the real rules in a topology of network namespaces
// (firewall_netns_test.go builds it).
func TestFirewall(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	serve(t, tp.out, ":8080", "out")
	serve(t, tp.a, ":80", "a")
	serve(t, tp.b, ":80", "b")
	serve(t, tp.host, ":7000", "host")
	serve(t, tp.out, hostPort(metadata, 80), "metadata")
	serve(t, tp.lan, ":80", "lan")
	outUDP := udpEcho(t, tp.out, hostPort(outside, 9999))
	outSrv := hostPort(outside, 8080)
	lanSrv := hostPort(lanServer, 80)
	hostSvcTAP, hostSvcWAN := hostPort(hostA, 7000), hostPort(hostWAN, 7000)
	hostSvc6 := hostPort(hostA6, 7000)

	// The topology works before any firewall: A reaches the host's service.
	expectReach(t, tp.a, hostSvcTAP, "host")
	expectReach(t, tp.a, hostSvc6, "host")
	expectReach(t, tp.host, hostPort(guestA, 80), "a")

	rootForward := readSysctl(t, 0, "net/ipv4/ip_forward")
	allLocalnet := readSysctl(t, tp.host, "net/ipv4/conf/all/route_localnet")
	wanLocalnet := readSysctl(t, tp.host, "net/ipv4/conf/"+wanDev+"/route_localnet")
	// A host that does not forward; writing ip_forward sets every device.
	if err := NewFirewall(int(tp.host)).setSysctl("net/ipv4/ip_forward", "0"); err != nil {
		t.Fatal(err)
	}
	// It forwards on its LAN side only (arriving there), not from wan0.
	if err := NewFirewall(int(tp.host)).setSysctl(forwardingKey(lanDev), "1"); err != nil {
		t.Fatal(err)
	}

	fw := NewFirewall(int(tp.host))
	fw.Record = filepath.Join(t.TempDir(), "forwarding.json")
	t.Cleanup(func() { fw.DeleteTable() })
	for range 2 {
		if err := fw.EnsureBase(); err != nil {
			t.Fatalf("EnsureBase: %v", err)
		}
	}
	t.Run("forwarding scoped", func(t *testing.T) {
		for key, want := range map[string]string{
			"net/ipv4/ip_forward": "0", // never the host-wide switch
			forwardingKey(wanDev): "1", // the default route's interface
			forwardingKey(lanDev): "1", // another network: untouched
		} {
			if got := readSysctl(t, tp.host, key); got != want {
				t.Errorf("%s = %s, want %s", key, got, want)
			}
		}
		rec, err := ReadForwardingRecord(fw.Record)
		if err != nil || len(rec.Interfaces) != 1 || rec.Interfaces[0].Name != wanDev || rec.Interfaces[0].Previous != "0" {
			t.Errorf("record = %+v, %v; want %s, previously 0", rec, err, wanDev)
		}
	})
	base := len(newLayout().baseRules([]string{wanDev}))
	t.Run("base idempotent", func(t *testing.T) {
		if got := countMatching(nftComments(t, tp), baseComment); got != base {
			t.Errorf("%d base rules after two EnsureBase, want %d", got, base)
		}
	})

	addVM := func(id, tap string, guest netip.Prefix, egress bool) {
		t.Helper()
		if err := fw.AddVM(VMRules{ID: id, TAP: tap, GuestIP: guest.Addr(), Egress: egress}); err != nil {
			t.Fatalf("AddVM %s: %v", id, err)
		}
	}
	addVM(idA, tapA, guestA, true)
	addVM(idB, tapB, guestB, false)

	t.Run("sysctls scoped", func(t *testing.T) {
		if got := readSysctl(t, tp.host, "net/ipv4/conf/"+tapA+"/route_localnet"); got != "1" {
			t.Errorf("route_localnet on %s = %s, want 1", tapA, got)
		}
		if got := readSysctl(t, tp.host, "net/ipv4/conf/all/route_localnet"); got != allLocalnet {
			t.Errorf("conf.all.route_localnet changed: %s -> %s", allLocalnet, got)
		}
		if got := readSysctl(t, tp.host, "net/ipv4/conf/"+wanDev+"/route_localnet"); got != wanLocalnet {
			t.Errorf("route_localnet on %s changed: %s -> %s", wanDev, wanLocalnet, got)
		}
		if got := readSysctl(t, 0, "net/ipv4/ip_forward"); got != rootForward {
			t.Errorf("ip_forward of the test's own namespace changed: %s -> %s", rootForward, got)
		}
	})

	t.Run("egress", func(t *testing.T) {
		if peer := expectReach(t, tp.a, outSrv, "out"); peer != hostWAN.Addr() {
			t.Errorf("outside saw %s, want the host's %s (masquerade)", peer, hostWAN.Addr())
		}
		expectDropped(t, tp.b, outSrv)
		addVM(idA, tapA, guestA, false) // re-adding replaces
		expectDropped(t, tp.a, outSrv)
		addVM(idA, tapA, guestA, true)
		expectReach(t, tp.a, outSrv, "out")
		nA := len(newLayout().vmRules(VMRules{ID: idA, TAP: tapA, GuestIP: guestA.Addr(), Egress: true}))
		if got := ruleSet(t, fw); got[ruleKey{VMID: idA, Kind: RuleVM}] != nA || got[ruleKey{VMID: idB, Kind: RuleVM}] != 2 {
			t.Errorf("rules after re-adding: %v", got)
		}
	})

	t.Run("vm to vm", func(t *testing.T) {
		addVM(idB, tapB, guestB, true) // both may leave the host...
		expectReach(t, tp.b, outSrv, "out")
		expectDropped(t, tp.a, hostPort(guestB, 80)) // ...but not reach each other
		expectDropped(t, tp.b, hostPort(guestA, 80))
		expectReach(t, tp.host, hostPort(guestA, 80), "a")
		expectReach(t, tp.host, hostPort(guestB, 80), "b")
		addVM(idB, tapB, guestB, false)
		expectDropped(t, tp.b, outSrv)
	})

	t.Run("vm to host", func(t *testing.T) {
		expectDropped(t, tp.a, hostSvcTAP)
		expectDropped(t, tp.a, hostSvcWAN)
		expectDropped(t, tp.a, hostPort(hostLAN, 7000))
		expectDropped(t, tp.a, hostSvc6)
		// A hostile guest routes 127.0.0.0/8 to the host (whose TAP has
		// route_localnet on, for forwards): still nothing.
		routeLoopbackOut(t, tp.a, hostA.Addr())
		expectDropped(t, tp.a, "127.0.0.1:7000")
		expectDropped(t, tp.b, hostPort(hostB, 7000))
		expectReach(t, tp.out, hostSvcWAN, "host")
	})

	t.Run("arp", func(t *testing.T) {
		// A guest that asks its TAP who has the host's other addresses
		// learns nothing: the TAP answers only for its own.
		h := nlHandle(t, tp.a)
		eth0 := must(h.LinkByName("eth0"))
		_, dst, _ := net.ParseCIDR(hostWAN.Addr().String() + "/32")
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		defer h.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK})
		dial(tp.a, hostPort(hostWAN, 7000), 2*time.Second) // makes A's kernel ask
		for _, n := range must(h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)) {
			if n.IP.Equal(hostWAN.Addr().AsSlice()) && len(n.HardwareAddr) > 0 && n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0 {
				t.Errorf("the TAP answered ARP for %s (%s): %v", hostWAN.Addr(), n.HardwareAddr, n)
			}
		}
	})

	t.Run("link-local", func(t *testing.T) {
		expectReach(t, tp.a, outSrv, "out") // A has egress...
		expectDropped(t, tp.a, hostPort(metadata, 80))
		expectReach(t, tp.host, hostPort(metadata, 80), "metadata") // ...and the host reaches it
	})

	t.Run("egress policy", func(t *testing.T) {
		policy := func(p EgressPolicy, dns netip.Addr) {
			t.Helper()
			if err := fw.AddVM(VMRules{ID: idA, TAP: tapA, GuestIP: guestA.Addr(), Egress: true, Policy: p, DNS: dns}); err != nil {
				t.Fatalf("AddVM with %+v: %v", p, err)
			}
		}
		defer addVM(idA, tapA, guestA, true)
		// Another build's smolvm rewrites the shared rules without the
		// jump to the DNS rules; DNSReachable sees it, EnsureBase mends it.
		for _, step := range []struct {
			do   func()
			want bool
		}{
			{func() {}, true},
			{func() { nft(t, tp, "flush", "chain", "inet", tableName, chainInput) }, false},
			{func() {
				if err := fw.EnsureBase(); err != nil {
					t.Fatal(err)
				}
			}, true},
		} {
			step.do()
			if ok, err := fw.DNSReachable(); err != nil || ok != step.want {
				t.Errorf("DNSReachable = %v, %v; want %v", ok, err, step.want)
			}
		}
		lan := netip.MustParsePrefix("198.19.0.0/24")
		serve(t, tp.host, hostPort(hostA, 53), "dns")
		banners := map[string]string{hostPort(hostA, 53): "dns", lanSrv: "lan", outSrv: "out"}
		for _, tc := range []struct {
			name       string
			policy     EgressPolicy
			dns        bool
			reach, not []string
		}{
			{name: "default perimeter", reach: []string{outSrv}, not: []string{lanSrv, hostPort(hostA, 53), hostSvcTAP}},
			{name: "allow cidr", policy: EgressPolicy{Allow: []netip.Prefix{lan}, Restricted: true}, reach: []string{lanSrv}, not: []string{outSrv}},
			{name: "deny inside allow", policy: EgressPolicy{Allow: []netip.Prefix{lan}, Deny: []netip.Prefix{netip.PrefixFrom(lanServer.Addr(), 32)}, Restricted: true}, not: []string{lanSrv, outSrv}},
			{name: "deny by default", policy: EgressPolicy{Deny: []netip.Prefix{outside.Masked()}}, not: []string{outSrv, lanSrv}},
			{name: "dns only to the gateway", dns: true, reach: []string{hostPort(hostA, 53), outSrv}, not: []string{hostSvcTAP}},
			{name: "restricted, nothing resolved", policy: EgressPolicy{Restricted: true}, dns: true, reach: []string{hostPort(hostA, 53)}, not: []string{outSrv, lanSrv}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var dns netip.Addr
				if tc.dns {
					dns = hostA.Addr()
				}
				policy(tc.policy, dns)
				for _, a := range tc.reach {
					expectReach(t, tp.a, a, banners[a])
				}
				for _, a := range tc.not {
					expectDropped(t, tp.a, a)
				}
				// Another VM never reaches A's resolver.
				expectDropped(t, tp.b, hostPort(hostA, 53))
			})
		}
		t.Run("resolved", func(t *testing.T) {
			policy(EgressPolicy{Restricted: true}, hostA.Addr())
			if err := fw.AllowResolved(idA, []netip.Addr{outside.Addr()}, time.Minute); err != nil {
				t.Fatal(err)
			}
			// Renewing an element already there works too.
			if err := fw.AllowResolved(idA, []netip.Addr{outside.Addr()}, 2*time.Minute); err != nil {
				t.Fatalf("renew: %v", err)
			}
			expectReach(t, tp.a, outSrv, "out")
			expectDropped(t, tp.a, lanSrv)
			if got, err := fw.Resolved(idA); err != nil || len(got) != 1 || got[0] != outside.Addr() {
				t.Errorf("Resolved = %v, %v", got, err)
			}
			if err := fw.FlushResolved(idA); err != nil {
				t.Fatal(err)
			}
			expectDropped(t, tp.a, outSrv)
			// A resolved address never beats a deny.
			policy(EgressPolicy{Restricted: true, Deny: []netip.Prefix{outside.Masked()}}, hostA.Addr())
			if err := fw.AllowResolved(idA, []netip.Addr{outside.Addr()}, time.Minute); err != nil {
				t.Fatal(err)
			}
			expectDropped(t, tp.a, outSrv)
		})
	})

	t.Run("neighbour to guest", func(t *testing.T) {
		// The outside routes the VM subnet through the host, but only
		// forwards open a way in.
		expectDropped(t, tp.out, hostPort(guestA, 80))
		expectDropped(t, tp.out, hostPort(guestB, 80))
		expectReach(t, tp.host, hostPort(guestA, 80), "a")
	})

	t.Run("no other forwarding", func(t *testing.T) {
		// wan0 forwards now, but only to VMs: nothing from the outside to
		// the LAN, nor the replies to the LAN's connections out.
		expectDropped(t, tp.out, lanSrv)
		expectDropped(t, tp.lan, outSrv)
		expectReach(t, tp.host, lanSrv, "lan")
	})

	t.Run("spoofing", func(t *testing.T) {
		addVM(idB, tapB, guestB, true)
		defer addVM(idB, tapB, guestB, false)
		bFlow := netip.AddrPortFrom(guestB.Addr(), 5555).String()
		if !udpSend(t, tp.b, bFlow, hostPort(outside, 9999), "from-b") {
			t.Fatal("B's own UDP flow to the outside got no answer")
		}
		<-outUDP
		// A claims B's address and port: the packet would match B's
		// established flow, which the forward chain accepts first.
		addAddr(t, tp.a, netip.PrefixFrom(guestB.Addr(), 32))
		udpSend(t, tp.a, bFlow, hostPort(outside, 9999), "spoofed-by-a")
		addAddr(t, tp.a, netip.MustParsePrefix("203.0.113.77/32"))
		udpSend(t, tp.a, "203.0.113.77:5556", hostPort(outside, 9999), "spoofed-by-a")
		select {
		case got := <-outUDP:
			t.Fatalf("the outside got %q from a spoofed source", got)
		case <-time.After(300 * time.Millisecond):
		}
	})

	addFwd := func(p PortForward) {
		t.Helper()
		if err := fw.AddForward(p); err != nil {
			t.Fatalf("AddForward %+v: %v", p, err)
		}
	}
	any4 := netip.IPv4Unspecified()
	addFwd(PortForward{VMID: idA, HostAddr: any4, HostPort: 8443, GuestIP: guestA.Addr(), GuestPort: 80})
	addFwd(PortForward{VMID: idA, HostPort: 8444, GuestIP: guestA.Addr(), GuestPort: 80}) // 127.0.0.1
	addFwd(PortForward{VMID: idB, HostAddr: hostWAN.Addr(), HostPort: 8445, GuestIP: guestB.Addr(), GuestPort: 80})

	t.Run("forward", func(t *testing.T) {
		if peer := expectReach(t, tp.out, hostPort(hostWAN, 8443), "a"); peer != outside.Addr() {
			t.Errorf("guest saw %s, want the outside client %s", peer, outside.Addr())
		}
		if peer := expectReach(t, tp.host, "127.0.0.1:8443", "a"); peer != hostA.Addr() {
			t.Errorf("guest saw %s for a connection to 127.0.0.1, want the TAP's %s", peer, hostA.Addr())
		}
		expectReach(t, tp.host, hostPort(hostWAN, 8443), "a")
		expectReach(t, tp.host, "127.0.0.1:8444", "a")
		expectRefused(t, tp.out, hostPort(hostWAN, 8444))    // loopback only
		expectReach(t, tp.out, hostPort(hostWAN, 8445), "b") // B has no egress, but answers
		expectReach(t, tp.host, hostPort(hostWAN, 8445), "b")
		expectRefused(t, tp.host, "127.0.0.1:8445")
		expectDropped(t, tp.a, hostPort(hostWAN, 8445)) // a forward is no way from A to B
		expectDropped(t, tp.out, hostPort(guestB, 80))  // only the forwarded address gets in
		expectDropped(t, tp.b, outSrv)                  // the forward opened nothing else

		err := fw.AddForward(PortForward{VMID: idB, HostAddr: any4, HostPort: 8443, GuestIP: guestB.Addr(), GuestPort: 80})
		if !errors.Is(err, ErrForwardInUse) {
			t.Errorf("forwarding A's port to B: %v, want ErrForwardInUse", err)
		}
		before := ruleSet(t, fw)
		addFwd(PortForward{VMID: idA, HostAddr: any4, HostPort: 8443, GuestIP: guestA.Addr(), GuestPort: 80})
		if after := ruleSet(t, fw); !mapsEqual(before, after) {
			t.Errorf("re-adding a forward changed the rules: %v -> %v", before, after)
		}
	})

	t.Run("golden", func(t *testing.T) {
		checkGolden(t, "firewall.nft", nft(t, tp, "list", "table", "inet", tableName))
	})

	t.Run("remove forward", func(t *testing.T) {
		want := ruleSet(t, fw)
		delete(want, ruleKey{VMID: idA, Kind: RuleForward, Host: "0.0.0.0:8443"})
		if err := fw.RemoveForward(idA, any4, 8443); err != nil {
			t.Fatal(err)
		}
		if got := ruleSet(t, fw); !mapsEqual(got, want) {
			t.Errorf("after RemoveForward: %v, want %v", got, want)
		}
		if err := fw.RemoveForward(idA, any4, 8443); err != nil {
			t.Errorf("removing it again: %v", err)
		}
		expectRefused(t, tp.out, hostPort(hostWAN, 8443))
		expectReach(t, tp.host, "127.0.0.1:8444", "a")
		if n := countMatching(nftComments(t, tp), "fwd:0.0.0.0:8443"); n != 0 {
			t.Errorf("nft still lists %d rules of the removed forward", n)
		}
	})

	t.Run("remove vm", func(t *testing.T) {
		want := ruleSet(t, fw)
		for k := range want {
			if k.VMID == idA {
				delete(want, k)
			}
		}
		if err := fw.RemoveVM(idA); err != nil {
			t.Fatal(err)
		}
		if got := ruleSet(t, fw); !mapsEqual(got, want) {
			t.Errorf("after RemoveVM: %v, want %v", got, want)
		}
		comments := nftComments(t, tp)
		if n := countMatching(comments, vmComment(idA)); n != 0 {
			t.Errorf("nft still lists %d rules of %s: %q", n, idA, comments)
		}
		if countMatching(comments, vmComment(idB)) == 0 {
			t.Errorf("RemoveVM(%s) took %s's rules: %q", idA, idB, comments)
		}
		expectRefused(t, tp.host, "127.0.0.1:8444")
		expectDropped(t, tp.a, outSrv) // an unclaimed smol* device gets nothing through
		expectReach(t, tp.out, hostPort(hostWAN, 8445), "b")
	})

	t.Run("teardown", func(t *testing.T) {
		for range 2 {
			if err := fw.RemoveVM(idB); err != nil {
				t.Fatal(err)
			}
		}
		if got := ruleSet(t, fw); len(got) != 0 {
			t.Errorf("rules left: %v", got)
		}
		for range 2 {
			if err := fw.DeleteTable(); err != nil {
				t.Fatalf("DeleteTable: %v", err)
			}
		}
		if got := ruleSet(t, fw); len(got) != 0 {
			t.Errorf("rules without a table: %v", got)
		}
		if err := fw.RemoveVM(idA); err != nil {
			t.Errorf("RemoveVM without a table: %v", err)
		}
		if err := fw.RemoveForward(idA, netip.Addr{}, 8444); err != nil {
			t.Errorf("RemoveForward without a table: %v", err)
		}
		if out := strings.TrimSpace(string(nft(t, tp, "list", "ruleset"))); out != "" {
			t.Errorf("ruleset left:\n%s", out)
		}
		expectReach(t, tp.a, hostSvcTAP, "host") // and traffic flows as before
		if got := readSysctl(t, tp.host, forwardingKey(wanDev)); got != "0" {
			t.Errorf("forwarding on %s after the last VM = %s, want 0 again", wanDev, got)
		}
		if _, err := os.Stat(fw.Record); !os.IsNotExist(err) {
			t.Errorf("record left: %v", err)
		}
	})
}

// TestForwardingAlreadyOn: on a host that forwards already (a router, a
// Docker host), smolvm changes and records nothing, adds no rule that
// would stop the host's own forwarding, and leaves it on at the end.
func TestForwardingAlreadyOn(t *testing.T) {
	requireRoot(t)
	host, _ := newNamespace(t, "host")
	out, _ := newNamespace(t, "out")
	hh := nlHandle(t, host)
	link(t, hh, nlHandle(t, out), out, wanDev, []netip.Prefix{hostWAN}, []netip.Prefix{outside}, hostWAN.Addr())
	wan := must(hh.LinkByName(wanDev))
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: wan.Attrs().Index, Gw: outside.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	fw := NewFirewall(int(host))
	fw.Record = filepath.Join(t.TempDir(), "forwarding.json")
	if err := fw.setSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := fw.EnsureBase(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fw.Record); !os.IsNotExist(err) {
		t.Errorf("a record for a host that forwarded already: %v", err)
	}
	l := newLayout()
	base, err := must(fw.conn()).GetRules(l.table, l.chains[chainForward])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range base {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Cmp); ok && strings.HasPrefix(string(c.Data), wanDev) {
				t.Errorf("forward chain has a rule for %s although smolvm changed nothing there", wanDev)
			}
		}
	}
	if err := fw.DeleteTable(); err != nil {
		t.Fatal(err)
	}
	if got := readSysctl(t, host, forwardingKey(wanDev)); got != "1" {
		t.Errorf("forwarding on %s = %s after DeleteTable, want 1 as before", wanDev, got)
	}
}
