package network

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files in testdata/")

// The test topology: a "host" namespace with two veth ends named like TAPs
// (smolaaaa, smolbbbb) leading to namespaces standing in for VMs a and b,
// wan0 leading to an "outside" namespace (the default route, and a
// neighbour that knows a route to the VM subnet), and lan0 leading to a
// "lan" namespace, another network the host is on. Nothing outside these
// namespaces is ever a traffic target.
const (
	tapA, tapB = "smolaaaa", "smolbbbb"
	idA, idB   = "vm-a", "vm-b"
	wanDev     = "wan0"
	lanDev     = "lan0"
)

var (
	hostA, guestA = netip.MustParsePrefix("172.29.0.1/30"), netip.MustParsePrefix("172.29.0.2/30")
	hostB, guestB = netip.MustParsePrefix("172.29.0.5/30"), netip.MustParsePrefix("172.29.0.6/30")
	hostA6        = netip.MustParsePrefix("fd00:a::1/64")
	guestA6       = netip.MustParsePrefix("fd00:a::2/64")
	// The outside is on a documentation range (TEST-NET-3), which the
	// default egress perimeter lets VMs reach; the LAN is on one it keeps
	// them from (the benchmark range, like a private network).
	hostWAN = netip.MustParsePrefix("203.0.113.1/24")
	outside = netip.MustParsePrefix("203.0.113.2/24")
	// metadata stands for a cloud's metadata service, in the outside
	// namespace, reached through the host's default route.
	metadata  = netip.MustParsePrefix("169.254.169.254/32")
	hostLAN   = netip.MustParsePrefix("198.19.0.1/24")
	lanServer = netip.MustParsePrefix("198.19.0.2/24")
)

type topology struct {
	host, a, b, out, lan netns.NsHandle
	hostName             string // named, for `ip netns exec`
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables rules")
	}
}

var nsSeq atomic.Int64

// newNamespace creates a named network namespace, removed when the test
// ends, without moving any of the test's threads into it.
func newNamespace(t *testing.T, role string) (netns.NsHandle, string) {
	t.Helper()
	name := fmt.Sprintf("smoltest-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	type result struct {
		h   netns.NsHandle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name) // moves this thread into it
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{h, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("create network namespace %s: %v", name, r.err)
	}
	t.Cleanup(func() {
		r.h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return r.h, name
}

func nlHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	for _, lo := range must(h.LinkList()) {
		if lo.Attrs().Name == "lo" {
			if err := h.LinkSetUp(lo); err != nil {
				t.Fatalf("lo up: %v", err)
			}
		}
	}
	return h
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// link creates a veth pair: hostEnd in host, eth0 in peer, with the
// addresses given (no duplicate address detection), and a default route in
// peer via gw.
func link(t *testing.T, host, peer *netlink.Handle, peerNS netns.NsHandle, hostEnd string, hostAddrs, peerAddrs []netip.Prefix, gw netip.Addr) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostEnd}, PeerName: "eth0", PeerNamespace: netlink.NsFd(peerNS)}
	if err := host.LinkAdd(veth); err != nil {
		t.Fatalf("veth %s: %v", hostEnd, err)
	}
	setup := func(h *netlink.Handle, name string, addrs []netip.Prefix) netlink.Link {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, a := range addrs {
			na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := h.AddrAdd(l, na); err != nil {
				t.Fatalf("%s: address %s: %v", name, a, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("%s up: %v", name, err)
		}
		return l
	}
	setup(host, hostEnd, hostAddrs)
	pl := setup(peer, "eth0", peerAddrs)
	if gw.IsValid() {
		if err := peer.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	var tp topology
	tp.host, tp.hostName = newNamespace(t, "host")
	tp.a, _ = newNamespace(t, "a")
	tp.b, _ = newNamespace(t, "b")
	tp.out, _ = newNamespace(t, "out")
	tp.lan, _ = newNamespace(t, "lan")
	hh := nlHandle(t, tp.host)
	link(t, hh, nlHandle(t, tp.a), tp.a, tapA, []netip.Prefix{hostA, hostA6}, []netip.Prefix{guestA, guestA6}, hostA.Addr())
	link(t, hh, nlHandle(t, tp.b), tp.b, tapB, []netip.Prefix{hostB}, []netip.Prefix{guestB}, hostB.Addr())
	// The outside's default route is the host: it stands for a neighbour
	// that has a route to the VM subnet and to the host's other networks.
	link(t, hh, nlHandle(t, tp.out), tp.out, wanDev, []netip.Prefix{hostWAN}, []netip.Prefix{outside, metadata}, hostWAN.Addr())
	link(t, hh, nlHandle(t, tp.lan), tp.lan, lanDev, []netip.Prefix{hostLAN}, []netip.Prefix{lanServer}, hostLAN.Addr())
	wan, err := hh.LinkByName(wanDev)
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: wan.Attrs().Index, Gw: outside.Addr().AsSlice()}); err != nil {
		t.Fatalf("host default route: %v", err)
	}
	return &tp
}

// serve listens on addr in ns and answers every connection with one line:
// banner and the peer address it saw.
func serve(t *testing.T, ns netns.NsHandle, addr, banner string) {
	t.Helper()
	var ln net.Listener
	err := inNetNS(int(ns), func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s (%s): %v", addr, banner, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", banner, c.RemoteAddr())
			c.Close()
		}
	}()
}

// dial connects from ns to addr and reads the server's line.
func dial(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var line string
	err := inNetNS(int(ns), func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}

// expectReach dials until the server named banner answers (5s at most) and
// returns the peer address the server saw.
func expectReach(t *testing.T, from netns.NsHandle, addr, banner string) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		line, err := dial(from, addr, time.Second)
		if err == nil {
			got, peer, _ := strings.Cut(line, " ")
			if got != banner {
				t.Fatalf("%s answered by %q, want %q", addr, got, banner)
			}
			return netip.MustParseAddrPort(peer).Addr().Unmap()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (%s) unreachable: %v", addr, banner, err)
		}
		time.Sleep(50 * time.Millisecond) // back off between attempts
	}
}

// expectDropped checks that a connection to addr gets no answer at all:
// the SYN is dropped, not refused.
func expectDropped(t *testing.T, from netns.NsHandle, addr string) {
	t.Helper()
	line, err := dial(from, addr, 300*time.Millisecond)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s: want the connection dropped (timeout), got %q, %v", addr, line, err)
	}
}

// expectRefused checks that nothing forwards addr: the host itself answers
// with a reset.
func expectRefused(t *testing.T, from netns.NsHandle, addr string) {
	t.Helper()
	line, err := dial(from, addr, 2*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s: want connection refused, got %q, %v", addr, line, err)
	}
}

func readSysctl(t *testing.T, ns netns.NsHandle, key string) string {
	t.Helper()
	var b []byte
	read := func() (err error) {
		b, err = os.ReadFile("/proc/sys/" + key)
		return err
	}
	var err error
	if ns == 0 {
		err = read()
	} else {
		err = inNetNS(int(ns), read)
	}
	if err != nil {
		t.Fatalf("sysctl %s: %v", key, err)
	}
	return string(bytes.TrimSpace(b))
}

func hostPort(a netip.Prefix, port int) string {
	return netip.AddrPortFrom(a.Addr(), uint16(port)).String()
}

type ruleKey struct {
	VMID string
	Kind RuleKind
	Host string
}

// ruleSet summarizes Rules(): how many rules each (vm, kind, forward) has.
func ruleSet(t *testing.T, fw *Firewall) map[ruleKey]int {
	t.Helper()
	rules, err := fw.Rules()
	if err != nil {
		t.Fatalf("Rules: %v", err)
	}
	m := map[ruleKey]int{}
	for _, r := range rules {
		k := ruleKey{VMID: r.VMID, Kind: r.Kind}
		if r.Kind == RuleForward {
			k.Host = netip.AddrPortFrom(r.HostAddr, r.HostPort).String()
		}
		m[k]++
	}
	return m
}

// nft runs the nft CLI in the host namespace; it skips the check when nft
// is not installed.
func nft(t *testing.T, tp *topology, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (scripts/deps.sh installs nftables)")
	}
	out, err := exec.Command("ip", append([]string{"netns", "exec", tp.hostName, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// nftComments lists the comment of every rule in the table, per chain, as
// the nft CLI reads it.
func nftComments(t *testing.T, tp *topology) []string {
	t.Helper()
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Chain   string `json:"chain"`
				Comment string `json:"comment"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(nft(t, tp, "-j", "list", "table", "inet", tableName), &doc); err != nil {
		t.Fatalf("nft json: %v", err)
	}
	var out []string
	for _, o := range doc.Nftables {
		if o.Rule != nil {
			out = append(out, o.Rule.Chain+": "+o.Rule.Comment)
		}
	}
	return out
}

func countMatching(list []string, sub string) int {
	n := 0
	for _, s := range list {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

func mapsEqual(a, b map[ruleKey]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

var nftVersionLine = regexp.MustCompile(`(?m)^#.*\n`)

// checkGolden compares got with testdata/name; -update rewrites it.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	got = nftVersionLine.ReplaceAll(got, nil)
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("nft list table differs from %s (run with -update if intended):\n%s", path, diffLines(string(want), string(got)))
	}
}

func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// udpEcho answers every datagram on addr in ns with the same bytes and
// sends each payload it got to the returned channel.
func udpEcho(t *testing.T, ns netns.NsHandle, addr string) <-chan string {
	t.Helper()
	var pc net.PacketConn
	err := inNetNS(int(ns), func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return got
}

// udpSend sends payload from laddr to raddr in ns and waits briefly for
// the echo; it reports whether one came back.
func udpSend(t *testing.T, ns netns.NsHandle, laddr, raddr, payload string) bool {
	t.Helper()
	var echoed bool
	err := inNetNS(int(ns), func() error {
		la, err := net.ResolveUDPAddr("udp4", laddr)
		if err != nil {
			return err
		}
		ra, err := net.ResolveUDPAddr("udp4", raddr)
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp4", la, ra)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		echoed = err == nil && string(buf[:n]) == payload
		return nil
	})
	if err != nil {
		t.Fatalf("udp %s -> %s: %v", laddr, raddr, err)
	}
	return echoed
}

// addAddr adds a to eth0 of ns, as a hostile guest would to spoof.
func addAddr(t *testing.T, ns netns.NsHandle, a netip.Prefix) {
	t.Helper()
	h := nlHandle(t, ns)
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(l, na); err != nil {
		t.Fatalf("address %s: %v", a, err)
	}
}

// expectNoReach checks that no server answers addr, however the attempt
// fails (dropped, refused or unreachable).
func expectNoReach(t *testing.T, from netns.NsHandle, addr string) {
	t.Helper()
	if line, err := dial(from, addr, 300*time.Millisecond); err == nil {
		t.Fatalf("%s answered %q, want no connection", addr, line)
	}
}

// routeLoopbackOut makes ns send 127.0.0.0/8 to gw instead of its own lo.
func routeLoopbackOut(t *testing.T, ns netns.NsHandle, gw netip.Addr) {
	t.Helper()
	h := nlHandle(t, ns)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(lo); err != nil {
		t.Fatal(err)
	}
	for _, a := range must(h.AddrList(lo, netlink.FAMILY_V4)) {
		if err := h.AddrDel(lo, &a); err != nil {
			t.Fatalf("lo: delete %s: %v", a.IPNet, err)
		}
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"net/ipv4/conf/all/route_localnet", "net/ipv4/conf/eth0/route_localnet"} {
		if err := (&Firewall{netns: int(ns)}).setSysctl(key, "1"); err != nil {
			t.Fatal(err)
		}
	}
	_, dst, _ := net.ParseCIDR("127.0.0.0/8")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("route 127.0.0.0/8 via %s: %v", gw, err)
	}
}
