package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// ProxySpecFile is the name, in a user-mode VM's directory, of the file
// that tells its egress proxy what to enforce. smolvm writes it at each
// start of a user-mode VM and at each policy change; the proxy reads it
// for every connection, so a change applies to the next one.
const ProxySpecFile = "egress-proxy.json"

// ProxyGuestAddr is where a user-mode guest finds its egress proxy: an
// address of QEMU's user-mode network that QEMU hands, connection by
// connection, to a relay into the VM's proxy (guestfwd).
var ProxyGuestAddr = netip.MustParseAddrPort("10.0.2.100:3128")

// Bounds of the proxy: every byte from the guest is untrusted.
const (
	maxProxyHeader  = 16 << 10 // bytes of a request's line and headers
	maxProxyConns   = 128      // connections at once; beyond, refused
	proxyHeaderWait = 30 * time.Second
	proxyDialWait   = 10 * time.Second
	proxyRate       = 50 // new connections per second (burst proxyBurst)
	proxyBurst      = 100
)

// Proxy is the egress of a user-mode VM. QEMU's user-mode network cannot
// filter what a guest sends out (and, unrestricted, lets it reach the
// host's loopback services), so such a VM runs restricted, with no route
// out at all, and reaches the network only through this HTTP proxy
// (CONNECT, and absolute-form http:// requests): the proxy resolves
// names itself and checks each destination against the same policy as
// the TAP firewall and resolver enforce.
type Proxy struct {
	// Spec returns the policy, read for each connection.
	Spec func() (Spec, error)
	// HostOrVM reports whether an address leads to the host itself or
	// to another VM: never reached, whatever the policy allows (nil =
	// loopback only).
	HostOrVM func(netip.Addr) bool
	// LAN returns the networks the host is directly on: reached only when
	// an allowed CIDR names them, as with TAP networking.
	LAN func() []netip.Prefix
	// Dial opens the connection to an allowed address (nil = a
	// net.Dialer); tests point it elsewhere.
	Dial func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// Lookup resolves a name's IPv4 addresses through upstream (nil = a
	// DNS client of upstream).
	Lookup func(ctx context.Context, upstream netip.AddrPort, name string) ([]netip.Addr, error)
	Logger *slog.Logger

	once     sync.Once
	limit    *rate.Limiter
	inflight chan struct{}
	warnings onceAMinute
}

func (p *Proxy) init() {
	p.once.Do(func() {
		p.limit = rate.NewLimiter(proxyRate, proxyBurst)
		p.inflight = make(chan struct{}, maxProxyConns)
		if p.Logger == nil {
			p.Logger = slog.New(slog.DiscardHandler)
		}
	})
}

func (p *Proxy) warn(msg string, args ...any) { p.warnings.warn(p.Logger, msg, args...) }

// Serve accepts connections on ln until ctx ends.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	p.init()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait() // the tunnels close with ctx
				return nil
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			// Out of descriptors, say: stop listening now (relays fail
			// at once instead of waiting in the backlog); open tunnels
			// run on.
			ln.Close()
			return err
		}
		if !p.limit.Allow() {
			p.warn("egress proxy: connections over the rate limit are refused", "rate", proxyRate)
			c.Close()
			continue
		}
		select {
		case p.inflight <- struct{}{}:
		default:
			p.warn("egress proxy: too many connections at once; refused", "max", maxProxyConns)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-p.inflight }()
			p.ServeConn(ctx, c)
		}()
	}
}

// ServeConn serves one proxy connection and closes it.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn) {
	p.init()
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	c.SetReadDeadline(time.Now().Add(proxyHeaderWait))
	lr := &io.LimitedReader{R: c, N: maxProxyHeader}
	br := bufio.NewReader(lr)
	req, err := http.ReadRequest(br)
	if err != nil {
		if lr.N <= 0 {
			proxyReply(c, http.StatusRequestHeaderFieldsTooLarge, "request headers over 16 KiB")
		} else if !errors.Is(err, io.EOF) {
			proxyReply(c, http.StatusBadRequest, "not an HTTP proxy request")
		}
		return
	}
	lr.N = math.MaxInt64 // the body and the tunnel are not headers
	c.SetReadDeadline(time.Time{})

	host, port, err := proxyTarget(req)
	if err != nil {
		proxyReply(c, http.StatusBadRequest, err.Error())
		return
	}
	up, err := p.connect(ctx, host, port)
	if err != nil {
		var d *DeniedError
		if errors.As(err, &d) {
			// Throttled, and cut: the name is the guest's, up to 16 KiB.
			p.warn("egress proxy: refused (more refusals within a minute are not logged)", "host", strconv.Quote(clip(host, 256)), "port", port, "why", d.Reason)
			proxyReply(c, http.StatusForbidden, err.Error())
		} else {
			proxyReply(c, http.StatusBadGateway, err.Error())
		}
		return
	}
	defer up.Close()
	if req.Method == http.MethodConnect {
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		// Bytes the client sent after its request (a TLS hello) are
		// already in br.
		splice(c, br, up)
		return
	}
	// An absolute-form request: sent on in origin form, one per
	// connection (a keep-alive client's next request may be for another
	// host, which this connection does not lead to).
	for _, v := range req.Header.Values("Connection") { // hop-by-hop by name
		for _, h := range strings.Split(v, ",") {
			req.Header.Del(strings.TrimSpace(h))
		}
	}
	for _, h := range []string{"Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "Connection", "Te", "Trailer", "Upgrade"} {
		req.Header.Del(h)
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = nil // Write would add Go's own
	}
	req.Trailer = nil
	req.Close = true
	req.RequestURI = ""
	req.Host = req.URL.Host // the server reached is the one checked
	go func() {
		if err := req.Write(up); err != nil {
			up.Close()
		}
	}()
	io.Copy(c, up)
}

// clip cuts s to at most n bytes.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// proxyTarget is where a request wants to go: CONNECT host:port, or the
// host of an absolute http:// URL (port 80 unless it names one).
func proxyTarget(req *http.Request) (string, int, error) {
	var hostport string
	switch {
	case req.Method == http.MethodConnect:
		hostport = req.Host
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return "", 0, fmt.Errorf("CONNECT %q: want HOST:PORT", hostport)
		}
	case req.URL != nil && req.URL.IsAbs():
		if req.URL.Scheme != "http" {
			return "", 0, fmt.Errorf("scheme %q: this proxy forwards http:// URLs, and tunnels anything else with CONNECT", req.URL.Scheme)
		}
		hostport = req.URL.Host
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			hostport = net.JoinHostPort(strings.Trim(hostport, "[]"), "80")
		}
	default:
		return "", 0, errors.New("send CONNECT HOST:PORT or a request for an absolute http:// URL (set http_proxy/https_proxy)")
	}
	host, ps, _ := net.SplitHostPort(hostport)
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", ps)
	}
	if host == "" {
		return "", 0, errors.New("no host")
	}
	return host, port, nil
}

// DeniedError says that the policy does not let the VM reach a
// destination.
type DeniedError struct {
	Target string
	Reason string
}

func (e *DeniedError) Error() string {
	return "smolvm: the VM's egress policy does not allow " + e.Target + ": " + e.Reason
}

// connect opens a connection to host:port if the policy allows it.
func (p *Proxy) connect(ctx context.Context, host string, port int) (net.Conn, error) {
	target := net.JoinHostPort(host, strconv.Itoa(port))
	denied := func(why string) error { return &DeniedError{Target: target, Reason: why} }
	spec, err := p.Spec()
	if err != nil {
		p.warn("egress proxy: no policy to enforce", "err", err)
		return nil, denied("no policy to enforce")
	}
	rules, err := spec.Rules()
	if err != nil {
		p.warn("egress proxy: the stored policy is invalid", "err", err)
		return nil, denied("the stored policy is invalid")
	}
	if rules.NoEgress {
		return nil, denied("the VM has no egress")
	}
	forbidden := p.HostOrVM
	if forbidden == nil {
		forbidden = func(netip.Addr) bool { return false }
	}
	var lan []netip.Prefix
	if p.LAN != nil {
		lan = p.LAN()
	}
	restricted := len(spec.Domains) > 0 || len(spec.Allow) > 0
	var candidates []netip.Addr
	viaName := false
	if a, err := netip.ParseAddr(host); err == nil {
		candidates = []netip.Addr{a.Unmap()}
	} else {
		name := NormalizeName(host)
		if err := validName(name); err != nil {
			return nil, denied("not a domain name: " + err.Error())
		}
		if len(spec.Domains) > 0 {
			if !rules.Names.Match(name) {
				return nil, denied("the name is not among the allowed domains")
			}
			viaName = true
		}
		up, err := ParseUpstream(spec.Upstream)
		if err != nil {
			return nil, errors.New("smolvm: no DNS upstream to resolve " + name + " with (--dns-upstream, $" + UpstreamEnv + " or the host's /etc/resolv.conf)")
		}
		lookup := p.Lookup
		if lookup == nil {
			lookup = lookupA
		}
		lctx, cancel := context.WithTimeout(ctx, upstreamTimeout*2)
		candidates, err = lookup(lctx, up, name)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("smolvm: resolve %s: %w", name, err)
		}
	}
	var allowed []netip.Addr
	for _, a := range candidates {
		if reachable(a, &rules, restricted, viaName, lan) && !forbidden(a) {
			allowed = append(allowed, a)
		}
	}
	if len(allowed) == 0 {
		if len(candidates) == 1 && candidates[0].String() == host {
			return nil, denied("the address is outside what the policy allows")
		}
		return nil, denied("it resolves to no address the policy allows")
	}
	dial := p.Dial
	if dial == nil {
		dial = func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			d := net.Dialer{Timeout: proxyDialWait}
			return d.DialContext(ctx, "tcp4", a.String())
		}
	}
	var lastErr error
	for _, a := range allowed {
		c, err := dial(ctx, netip.AddrPortFrom(a, uint16(port)))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("smolvm: connect %s: %w", target, lastErr)
}

// reachable is the policy for one address, as the TAP firewall and
// resolver apply it: never loopback or a denied network; an allowed
// network always; else, with allowances, only addresses an allowed name
// resolved to (outside the perimeter); without, any address outside the
// perimeter and the host's LANs.
func reachable(a netip.Addr, r *Rules, restricted, viaName bool, lan []netip.Prefix) bool {
	a = a.Unmap()
	if !a.Is4() || a.IsUnspecified() || a.IsLoopback() {
		return false
	}
	for _, p := range r.Deny {
		if p.Contains(a) {
			return false
		}
	}
	for _, p := range r.Allow {
		if p.Contains(a) {
			return true
		}
	}
	if InPerimeter(a) {
		return false
	}
	if restricted {
		return viaName
	}
	for _, p := range lan {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// lookupA asks upstream alone for name's A records, from the host's
// sockets, as the TAP resolver does: the name as given (no search
// domains of the host's resolv.conf, no /etc/hosts), the CNAME chain
// from it followed, records for other names ignored.
func lookupA(ctx context.Context, upstream netip.AddrPort, name string) ([]netip.Addr, error) {
	n, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, errors.New("not a domain name")
	}
	q := dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	resp, err := askUpstream(ctx, upstream, q)
	if err != nil {
		return nil, errors.New("the DNS upstream did not answer")
	}
	ans, rc := filterAnswer(q, resp, &anyAddress)
	switch {
	case rc == dnsmessage.RCodeNameError:
		return nil, errors.New("no such name")
	case rc != dnsmessage.RCodeSuccess:
		return nil, errors.New("the DNS upstream failed")
	case len(ans.addrs) == 0:
		return nil, errors.New("no IPv4 address")
	}
	return ans.addrs, nil
}

// anyAddress hands out every address: the proxy checks them itself.
var anyAddress = Rules{Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}

// proxyReply writes a short HTTP answer; what went wrong is in the body, for
// whoever runs curl in the guest.
func proxyReply(c net.Conn, code int, msg string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	body := msg + "\n"
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	// The client may still be sending (a request cut at the header
	// bound): closing now would make its write fail before it reads the
	// answer. Say we are done, then take a little more of what it sends.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.CopyN(io.Discard, c, 256<<10)
	}
}

// splice copies both ways until both sides are done, passing on each
// side's end of writing as a half-close.
func splice(client net.Conn, fromClient io.Reader, up net.Conn) {
	done := make(chan struct{}, 2)
	half := func(dst net.Conn, src io.Reader) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go half(up, fromClient)
	go half(client, up)
	<-done
	<-done
}

// ListenProxy listens on the unix socket path for a VM's relays: any
// stale socket there is replaced, and only the owner and group gid
// (QEMU's, whose relays connect) may connect. The directory must keep
// everyone else out: until the mode is set, the socket has the umask's.
func ListenProxy(path string, gid, peer int) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("egress proxy: %s exists and is no socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	if gid > 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("egress proxy: %w", err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	return &peerListener{Listener: ln, uid: peer}, nil
}

// peerListener accepts connections of one user (and root) only: the
// socket's group may be shared (a VM running as the owner of its shared
// folders has that user's primary group).
type peerListener struct {
	net.Listener
	uid int
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if uid, ok := peerUID(c); ok && (uid == l.uid || uid == 0) {
			return c, nil
		}
		c.Close()
	}
}

// peerUID is the user of the process at the other end of a unix socket.
func peerUID(c net.Conn) (int, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, false
	}
	return int(cred.Uid), true
}
