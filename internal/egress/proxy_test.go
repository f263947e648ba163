package egress

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxyWorld serves a Proxy on loopback whose "internet" is a map of
// addresses to banners: Dial, the one stand-in, connects every allowed
// address to a loopback server that prints its banner (nothing else runs
// here), and records what was dialed. Lookup is a zone.
type proxyWorld struct {
	t       *testing.T
	spec    Spec
	addr    string
	mu      sync.Mutex
	dialed  []netip.AddrPort
	specErr error        // what Spec fails with, if set
	log     lockedBuffer // the proxy's log
}

// lockedBuffer is a log destination the proxy's goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newProxyWorld(t *testing.T, spec Spec) *proxyWorld {
	w := &proxyWorld{t: t, spec: spec}
	banner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { banner.Close() })
	go func() {
		for {
			c, err := banner.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				line, _ := r.ReadString('\n')
				fmt.Fprintf(c, "banner got %q\n", strings.TrimSpace(line))
				for strings.HasPrefix(line, "GET ") { // a request: its headers too
					h, err := r.ReadString('\n')
					if err != nil || strings.TrimSpace(h) == "" {
						break
					}
					fmt.Fprintf(c, "header %q\n", strings.TrimSpace(h))
				}
			}()
		}
	}()
	zone := map[string][]netip.Addr{
		"ok.test":       {netip.MustParseAddr("198.51.100.3")},
		"bad.test":      {netip.MustParseAddr("198.51.100.4")},
		"priv.test":     {netip.MustParseAddr("10.1.2.3")},
		"mixed.test":    {netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("198.51.100.3")},
		"loop.test":     {netip.MustParseAddr("127.0.0.1")},
		"a.ok.test":     {netip.MustParseAddr("198.51.100.5")},
		"lan.test":      {netip.MustParseAddr("203.0.113.7")},
		"hostaddr.test": {netip.MustParseAddr("198.51.100.99")},
		"mapped.test":   {netip.MustParseAddr("::ffff:127.0.0.1")},
	}
	p := &Proxy{
		Spec:     func() (Spec, error) { return w.spec, w.specErr },
		Logger:   slog.New(slog.NewTextHandler(&w.log, nil)),
		HostOrVM: func(a netip.Addr) bool { return a == netip.MustParseAddr("198.51.100.99") },
		LAN:      func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")} },
		Lookup: func(_ context.Context, _ netip.AddrPort, name string) ([]netip.Addr, error) {
			if a, ok := zone[name]; ok {
				return a, nil
			}
			return nil, errors.New("no such host")
		},
		Dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			w.mu.Lock()
			w.dialed = append(w.dialed, a)
			w.mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", banner.Addr().String())
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	w.addr = ln.Addr().String()
	return w
}

// ask sends raw to the proxy and returns all it answers.
func (w *proxyWorld) ask(raw string) string {
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		w.t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, raw)
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestProxyPolicy(t *testing.T) {
	for _, tt := range []struct {
		name   string
		spec   Spec
		target string
		ok     bool
		dial   string // the address dialed, when ok (default: target's)
	}{
		{"default: public name", Spec{Upstream: "192.0.2.53:53"}, "bad.test:80", true, ""},
		{"default: public address", Spec{}, "198.51.100.4:80", true, ""},
		{"default: private address", Spec{}, "10.1.2.3:80", false, ""},
		{"default: name resolving private", Spec{Upstream: "192.0.2.53:53"}, "priv.test:80", false, ""},
		{"default: mixed answer keeps the public one", Spec{Upstream: "192.0.2.53:53"}, "mixed.test:80", true, "198.51.100.3:80"},
		{"default: mapped loopback answer", Spec{Upstream: "192.0.2.53:53"}, "mapped.test:80", false, ""},
		{"default: mapped loopback literal", Spec{}, "[::ffff:127.0.0.1]:80", false, ""},
		{"default: loopback", Spec{}, "127.0.0.1:22", false, ""},
		{"default: name resolving to loopback", Spec{Upstream: "192.0.2.53:53"}, "loop.test:22", false, ""},
		{"default: metadata", Spec{}, "169.254.169.254:80", false, ""},
		{"default: host's LAN", Spec{}, "203.0.113.7:80", false, ""},
		{"default: IPv6", Spec{}, "[2001:db8::1]:80", false, ""},
		{"default: the host itself", Spec{}, "198.51.100.99:80", false, ""},
		{"domains: allowed", Spec{Domains: []string{"ok.test"}, Upstream: "192.0.2.53:53"}, "ok.test:443", true, ""},
		{"domains: case and dot", Spec{Domains: []string{"ok.test"}, Upstream: "192.0.2.53:53"}, "OK.Test.:443", true, ""},
		{"domains: other name", Spec{Domains: []string{"ok.test"}, Upstream: "192.0.2.53:53"}, "bad.test:443", false, ""},
		{"domains: wildcard below", Spec{Domains: []string{"*.ok.test"}, Upstream: "192.0.2.53:53"}, "a.ok.test:443", true, ""},
		{"domains: wildcard not apex", Spec{Domains: []string{"*.ok.test"}, Upstream: "192.0.2.53:53"}, "ok.test:443", false, ""},
		{"domains: address literal", Spec{Domains: []string{"ok.test"}}, "198.51.100.3:443", false, ""},
		{"domains: allowed name, private answer", Spec{Domains: []string{"priv.test"}, Upstream: "192.0.2.53:53"}, "priv.test:80", false, ""},
		{"domains: allowed name on the host's LAN", Spec{Domains: []string{"lan.test"}, Upstream: "192.0.2.53:53"}, "lan.test:80", true, ""},
		{"cidr: allowed private", Spec{Allow: []string{"10.0.0.0/8"}}, "10.1.2.3:80", true, ""},
		{"cidr: outside", Spec{Allow: []string{"10.0.0.0/8"}}, "198.51.100.4:80", false, ""},
		{"cidr: everything still not loopback", Spec{Allow: []string{"0.0.0.0/0"}}, "127.0.0.1:80", false, ""},
		{"cidr: everything still not the host", Spec{Allow: []string{"0.0.0.0/0"}}, "198.51.100.99:80", false, ""},
		{"deny wins over cidr", Spec{Allow: []string{"198.51.100.0/24"}, Deny: []string{"198.51.100.4/32"}}, "198.51.100.4:80", false, ""},
		{"deny wins over name", Spec{Domains: []string{"ok.test"}, Deny: []string{"198.51.100.0/24"}, Upstream: "192.0.2.53:53"}, "ok.test:80", false, ""},
		{"no egress", Spec{NoEgress: true}, "198.51.100.4:80", false, ""},
		{"no upstream", Spec{}, "ok.test:80", false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newProxyWorld(t, tt.spec)
			out := w.ask("CONNECT " + tt.target + " HTTP/1.1\r\nHost: " + tt.target + "\r\n\r\nhello\n")
			got := strings.HasPrefix(out, "HTTP/1.1 200 ") && strings.Contains(out, `banner got "hello"`)
			if got != tt.ok {
				t.Errorf("CONNECT %s under %+v: %q, want allowed=%v", tt.target, tt.spec, out, tt.ok)
			}
			if !tt.ok && len(w.dialed) != 0 {
				t.Errorf("refused, yet dialed %v", w.dialed)
			}
			if tt.ok {
				want := tt.dial
				if want == "" {
					want = tt.target
					if h, p, err := net.SplitHostPort(tt.target); err == nil {
						if a, err := netip.ParseAddr(h); err == nil {
							want = net.JoinHostPort(a.String(), p)
						} else {
							want = "" // a name: its zone's address
						}
					}
				}
				if len(w.dialed) != 1 || (want != "" && w.dialed[0].String() != want) {
					t.Errorf("dialed %v, want %s", w.dialed, want)
				}
			}
		})
	}
}

func TestProxyRequests(t *testing.T) {
	w := newProxyWorld(t, Spec{Domains: []string{"ok.test"}, Upstream: "192.0.2.53:53"})
	for _, tt := range []struct {
		name, raw, want string
	}{
		{"absolute form, sent on in origin form", "GET http://ok.test/x?y=1 HTTP/1.1\r\nHost: ok.test\r\nProxy-Authorization: secret\r\n\r\n", `banner got "GET /x?y=1 HTTP/1.1"`},
		{"https URL", "GET https://ok.test/ HTTP/1.1\r\nHost: ok.test\r\n\r\n", "HTTP/1.1 400 "},
		{"origin form", "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n", "HTTP/1.1 400 "},
		{"garbage", "\x16\x03\x01\x02\x00garbage\r\n\r\n", "HTTP/1.1 400 "},
		{"huge header", "CONNECT ok.test:80 HTTP/1.1\r\nX: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "HTTP/1.1 431 "},
		{"no port", "CONNECT ok.test HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
		{"port zero", "CONNECT ok.test:0 HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
		{"bad name", "CONNECT ok..test:80 HTTP/1.1\r\n\r\n", "HTTP/1.1 403 "},
		{"refused says why", "CONNECT bad.test:80 HTTP/1.1\r\n\r\n", "not among the allowed domains"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if out := w.ask(tt.raw); !strings.Contains(out, tt.want) {
				t.Errorf("%q: %q, want %q", tt.raw, out, tt.want)
			}
		})
	}
	out := w.ask("GET http://ok.test/ HTTP/1.1\r\nHost: bad.test\r\nProxy-Authorization: secret\r\nX-Keep: 1\r\n\r\n")
	if strings.Contains(out, "secret") || !strings.Contains(out, `header "X-Keep: 1"`) {
		t.Errorf("headers sent on: %q, want X-Keep and no Proxy-Authorization", out)
	}
	if strings.Contains(out, "User-Agent") {
		t.Errorf("a User-Agent the client did not send went on: %q", out)
	}
	if !strings.Contains(out, `header "Host: ok.test"`) {
		t.Errorf("Host sent on is not the host checked: %q", out)
	}
}

// TestProxyConnectionBound: a guest opening connections without end is
// refused beyond maxProxyConns, and served again once they close.
func TestProxyConnectionBound(t *testing.T) {
	w := newProxyWorld(t, Spec{})
	var conns []net.Conn
	for range maxProxyConns + 20 {
		c, err := net.Dial("tcp", w.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		time.Sleep(11 * time.Millisecond) // under the rate limit
	}
	// All read at once: the refused ones end at once, the served ones
	// wait for their headers until the deadline.
	var closed atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := closed.Load(); n < 20 {
		t.Errorf("%d of %d idle connections were refused, want at least 20", n, len(conns))
	}
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if out := w.ask("CONNECT 198.51.100.4:80 HTTP/1.1\r\n\r\nhi\n"); !strings.Contains(out, `banner got "hi"`) {
		t.Errorf("after the burst: %q", out)
	}
}

// TestProxyLookup: the proxy asks its upstream alone, for the name as
// given (no search domains, no /etc/hosts), follows the CNAME chain from
// it and ignores records for other names, as the TAP resolver does.
func TestProxyLookup(t *testing.T) {
	up := newFakeUpstream(t, map[string][]fakeRecord{
		"ok.test":      {{name: "ok.test", a: "198.51.100.3", ttl: 60}},
		"alias.test":   {{name: "alias.test", cname: "ok.test", ttl: 60}, {name: "ok.test", a: "198.51.100.3", ttl: 60}},
		"stuffed.test": {{name: "stuffed.test", a: "198.51.100.3", ttl: 60}, {name: "other.test", a: "198.51.100.4", ttl: 60}},
		"v6only.test":  {},
	})
	for _, tt := range []struct {
		name, want, err string
	}{
		{"ok.test", "[198.51.100.3]", ""},
		{"alias.test", "[198.51.100.3]", ""},
		{"stuffed.test", "[198.51.100.3]", ""},
		{"missing.test", "", "no such name"},
		{"v6only.test", "", "no IPv4 address"},
	} {
		addrs, err := lookupA(context.Background(), up.addr, tt.name)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("%s: %v, %v; want error %q", tt.name, addrs, err, tt.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(addrs) != tt.want {
			t.Errorf("%s: %v, %v; want %s", tt.name, addrs, err, tt.want)
		}
	}
	if _, err := lookupA(context.Background(), netip.MustParseAddrPort("127.0.0.1:1"), "ok.test"); err == nil || strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("no upstream: %v, want an error that names no host address", err)
	}
}

// TestProxyPeer: the proxy's socket serves QEMU's user and root only,
// whoever else shares its group.
func TestProxyPeer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: connects as another user")
	}
	socat, err := exec.LookPath("socat")
	if err != nil {
		t.Skip("socat is not installed (scripts/deps.sh installs it)")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir makes both 0700
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "s")
	ln, err := ListenProxy(sock, 65534, 4242) // group nogroup, peer uid 4242
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "served\n")
			c.Close()
			served <- struct{}{}
		}
	}()
	as := func(uid string) string {
		cmd := exec.Command("setpriv", "--reuid="+uid, "--regid=65534", "--clear-groups", socat, "-t", "1", "STDIO", "UNIX-CONNECT:"+sock)
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := as("65534"); strings.Contains(out, "served") {
		t.Errorf("a user of the socket's group, not its peer, was served: %q", out)
	}
	if out := as("4242"); !strings.Contains(out, "served") {
		t.Errorf("the peer was not served: %q", out)
	}
}

// TestProxyQuiet: what a hostile guest provokes reaches neither the log
// without bound nor, as host details, the guest.
func TestProxyQuiet(t *testing.T) {
	w := newProxyWorld(t, Spec{Domains: []string{"ok.test"}})
	name := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 10<<10)
	for range 60 {
		if out := w.ask("CONNECT " + name + ":80 HTTP/1.1\r\n\r\n"); !strings.Contains(out, " 403 ") {
			t.Fatalf("refusal: %q", out)
		}
	}
	if log := w.log.String(); strings.Count(log, "\n") > 1 || len(log) > 2<<10 {
		t.Errorf("60 refusals of 10 KiB names wrote %d log lines, %d bytes; want at most one short line", strings.Count(log, "\n"), len(log))
	}
	w.specErr = errors.New("open /root/.local/state/smolvm/vms/x/egress-proxy.json: no such file")
	if out := w.ask("CONNECT ok.test:80 HTTP/1.1\r\n\r\n"); !strings.Contains(out, " 403 ") || strings.Contains(out, "/root") {
		t.Errorf("no policy: %q, want a 403 that names no host path", out)
	}
}
