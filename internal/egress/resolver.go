package egress

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Bounds of the resolver. Every byte from the guest and from the upstream
// is untrusted: queries, answers, connections and rates are all capped.
const (
	maxQuery        = 1232 // bytes of one query (the usual EDNS size); larger is dropped
	maxUDPReply     = 512  // bytes of an answer over UDP; beyond it the answer is truncated (TC)
	maxUpstreamUDP  = 4096 // bytes read of an upstream answer over UDP
	maxAnswers      = 64   // resource records of an upstream answer looked at
	maxAddrs        = 16   // A records handed to the guest per answer
	maxCNAMEHops    = 8    // length of a CNAME chain followed
	maxInflight     = 32   // queries being answered at once; beyond, dropped
	maxTCPConns     = 8    // TCP connections from the guest at once
	tcpIdle         = 10 * time.Second
	upstreamTimeout = 3 * time.Second
	// DefaultRate and DefaultBurst bound the queries of one VM: beyond,
	// they are dropped (a stub resolver retries).
	DefaultRate  = 50
	DefaultBurst = 100
	// MinAllowTTL and MaxAllowTTL clamp how long an answered address stays
	// allowed; the guest is told a TTL no longer than that.
	MinAllowTTL = time.Minute
	MaxAllowTTL = time.Hour
)

// Rules are what the resolver enforces.
type Rules struct {
	// NoEgress answers every name NXDOMAIN.
	NoEgress bool
	// Names, if not nil and not empty, restricts answers to the names it
	// matches; the others get NXDOMAIN. Nil answers every name (the
	// default policy: the perimeter alone limits where the VM goes).
	Names *Matcher
	// Allow are networks whose addresses may be handed out even if they
	// are in the Perimeter; Deny are never handed out.
	Allow, Deny []netip.Prefix
}

func (r *Rules) restricted() bool { return r.Names != nil && !r.Names.Empty() }

// handsOut reports whether an address may reach the guest in an answer:
// never a denied one, nor one in the perimeter unless an allowed CIDR
// names it.
func (r *Rules) handsOut(a netip.Addr) bool {
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
	return !InPerimeter(a)
}

// AllowFunc lets the VM connect to addrs for at least ttl (the firewall's
// set of resolved addresses). The resolver calls it before it answers, so
// the guest's first connection after the answer is already allowed.
type AllowFunc func(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error

// Config configures a Resolver.
type Config struct {
	// Listen is the address to serve on, UDP and TCP: the VM's gateway
	// (host end of its TAP), port 53.
	Listen netip.AddrPort
	// Device, if set, binds the sockets to that interface (the VM's TAP),
	// so only what arrives on it is answered.
	Device string
	// Upstream is the resolver allowed names are forwarded to, from the
	// host's own sockets: the guest's address never reaches it. Invalid =
	// none: allowed names get SERVFAIL.
	Upstream netip.AddrPort
	// Allow is called with the addresses of each answer in a restricted
	// policy (Rules.Names set); nil = none needed.
	Allow AllowFunc
	// Rate and Burst bound the queries per second; 0 = DefaultRate and
	// DefaultBurst.
	Rate  float64
	Burst int
	// Logger gets what was refused and why (nil = discard).
	Logger *slog.Logger
}

// Resolver is the DNS server of one VM.
type Resolver struct {
	cfg      Config
	rules    atomic.Pointer[Rules]
	upstream atomic.Pointer[netip.AddrPort]
	// beforeQuery, if set, runs before each query is looked at (ServeFile
	// reloads a changed spec there).
	beforeQuery func()
	limit       *rate.Limiter
	inflight    chan struct{}
	log         *slog.Logger

	warnings onceAMinute
	mu       sync.Mutex
	stats    Stats // guarded by mu
}

// Stats counts what a Resolver did.
type Stats struct {
	Queries, Answered, Refused, Dropped, Malformed, Limited, UpstreamErrors int
}

// NewResolver returns a resolver enforcing rules; Serve runs it.
func NewResolver(cfg Config, rules Rules) (*Resolver, error) {
	if !cfg.Listen.IsValid() {
		return nil, fmt.Errorf("%w: resolver: no listen address", ErrInvalid)
	}
	if cfg.Rate == 0 {
		cfg.Rate, cfg.Burst = DefaultRate, DefaultBurst
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Resolver{cfg: cfg, limit: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst), inflight: make(chan struct{}, maxInflight), log: log}
	r.SetRules(rules)
	r.setUpstream(cfg.Upstream)
	return r, nil
}

func (r *Resolver) setUpstream(a netip.AddrPort) { r.upstream.Store(&a) }

// SetRules replaces the rules; queries from now on see the new ones.
func (r *Resolver) SetRules(rules Rules) { r.rules.Store(&rules) }

// Stats returns the counters so far.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Resolver) count(f func(*Stats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

func (r *Resolver) listenConfig() net.ListenConfig {
	return net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// TCP only: a restarted resolver must not wait out TIME_WAIT;
			// UDP with it would let two resolvers share the port.
			if strings.HasPrefix(network, "tcp") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
			if serr == nil && r.cfg.Device != "" {
				serr = unix.BindToDevice(int(fd), r.cfg.Device)
			}
		})
		return errors.Join(err, serr)
	}}
}

// Serve answers queries until ctx ends; it returns nil then, or the error
// that stopped it (such as the address not being there to listen on).
func (r *Resolver) Serve(ctx context.Context) error {
	lc := r.listenConfig()
	pc, err := lc.ListenPacket(ctx, "udp4", r.cfg.Listen.String())
	if err != nil {
		return fmt.Errorf("resolver: %w", err)
	}
	ln, err := lc.Listen(ctx, "tcp4", r.cfg.Listen.String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("resolver: %w", err)
	}
	return r.serve(ctx, pc, ln)
}

// serve answers on the sockets given until ctx ends, and closes them.
func (r *Resolver) serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var err error
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errc <- r.serveUDP(ctx, pc) }()
	go func() { defer wg.Done(); errc <- r.serveTCP(ctx, ln) }()
	go func() {
		<-ctx.Done()
		pc.Close()
		ln.Close()
	}()
	err = <-errc
	cancel()
	wg.Wait()
	if parent.Err() != nil {
		return nil
	}
	return err
}

func (r *Resolver) serveUDP(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, maxQuery+1)
	// Replies to one client socket go out in the order its queries came,
	// as from a resolver that answers one at a time: some stub resolvers
	// (busybox nslookup) send A and AAAA with one id and take the first
	// reply with that id for the first query. Answers are still worked
	// out concurrently; only sending waits. The map holds at most
	// maxInflight entries.
	var mu sync.Mutex
	last := map[string]chan struct{}{}
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("resolver: udp: %w", err)
		}
		if n > maxQuery {
			r.count(func(s *Stats) { s.Malformed++ })
			continue
		}
		if !r.admit() {
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		key, done := from.String(), make(chan struct{})
		mu.Lock()
		prev := last[key]
		last[key] = done
		mu.Unlock()
		go func() {
			defer func() { <-r.inflight }()
			reply := r.answer(ctx, q, maxUDPReply)
			if prev != nil {
				select {
				case <-prev:
				case <-ctx.Done():
				}
			}
			if reply != nil {
				pc.WriteTo(reply, from)
			}
			close(done)
			mu.Lock()
			if last[key] == done {
				delete(last, key)
			}
			mu.Unlock()
		}()
	}
}

func (r *Resolver) warn(msg string, args ...any) { r.warnings.warn(r.log, msg, args...) }

// onceAMinute logs each warning at most once a minute: what the guest
// provokes must not be able to fill the keeper's log.
type onceAMinute struct {
	mu   sync.Mutex
	last map[string]time.Time // of each message
}

func (o *onceAMinute) warn(log *slog.Logger, msg string, args ...any) {
	o.mu.Lock()
	if time.Since(o.last[msg]) < time.Minute {
		o.mu.Unlock()
		return
	}
	if o.last == nil {
		o.last = map[string]time.Time{}
	}
	o.last[msg] = time.Now()
	o.mu.Unlock()
	log.Warn(msg, args...)
}

// admit takes a token and an in-flight slot for one query, or counts it
// as dropped.
func (r *Resolver) admit() bool {
	r.count(func(s *Stats) { s.Queries++ })
	if !r.limit.Allow() {
		r.count(func(s *Stats) { s.Limited++ })
		r.warn("dns: queries over the rate limit are dropped", "rate", r.cfg.Rate, "burst", r.cfg.Burst)
		return false
	}
	select {
	case r.inflight <- struct{}{}:
		return true
	default:
		r.count(func(s *Stats) { s.Dropped++ })
		return false
	}
}

func (r *Resolver) serveTCP(ctx context.Context, ln net.Listener) error {
	conns := make(chan struct{}, maxTCPConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("resolver: tcp: %w", err)
		}
		select {
		case conns <- struct{}{}:
		default:
			c.Close() // too many at once
			r.count(func(s *Stats) { s.Dropped++ })
			continue
		}
		go func() {
			defer func() { <-conns }()
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			r.serveConn(ctx, c)
		}()
	}
}

// serveConn answers length-prefixed queries on one TCP connection until
// it idles, misbehaves or the guest closes it.
func (r *Resolver) serveConn(ctx context.Context, c net.Conn) {
	var hdr [2]byte
	buf := make([]byte, maxQuery)
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		if _, err := readFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n > maxQuery || n == 0 {
			r.count(func(s *Stats) { s.Malformed++ })
			return
		}
		if _, err := readFull(c, buf[:n]); err != nil {
			return
		}
		if !r.admit() {
			return
		}
		reply := r.answer(ctx, buf[:n], 65535)
		<-r.inflight
		if reply == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(tcpIdle))
		out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err := c.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// answer returns the reply to one query (at most size bytes), or nil to
// send nothing (unparsable, or itself a response).
func (r *Resolver) answer(ctx context.Context, query []byte, size int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		r.count(func(s *Stats) { s.Malformed++ })
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil {
		r.count(func(s *Stats) { s.Malformed++ })
		return nil
	}
	reply := func(rc dnsmessage.RCode, q []dnsmessage.Question, ans *filtered) []byte {
		return buildReply(h, rc, q, ans, size)
	}
	if h.OpCode != 0 {
		return reply(dnsmessage.RCodeNotImplemented, qs, nil)
	}
	if len(qs) != 1 {
		r.count(func(s *Stats) { s.Malformed++ })
		return reply(dnsmessage.RCodeFormatError, nil, nil)
	}
	q := qs[0]
	if r.beforeQuery != nil {
		r.beforeQuery()
	}
	rules := r.rules.Load()
	name := q.Name.String()
	if q.Class != dnsmessage.ClassINET {
		return reply(dnsmessage.RCodeRefused, qs, nil)
	}
	if rules.NoEgress || (rules.restricted() && !rules.Names.Match(name)) {
		r.count(func(s *Stats) { s.Refused++ })
		r.log.Debug("dns: name not allowed", "name", name)
		return reply(dnsmessage.RCodeNameError, qs, nil)
	}
	if q.Type != dnsmessage.TypeA {
		r.log.Debug("dns: no data", "name", name, "id", h.ID, "type", q.Type)
		// Guests have no IPv6, and only addresses become allowances: an
		// allowed name has no other data here.
		r.count(func(s *Stats) { s.Answered++ })
		return reply(dnsmessage.RCodeSuccess, qs, nil)
	}
	began := time.Now()
	up, err := r.forward(ctx, q)
	upTook := time.Since(began)
	if err != nil {
		r.count(func(s *Stats) { s.UpstreamErrors++ })
		r.log.Debug("dns: upstream", "name", name, "err", err)
		return reply(dnsmessage.RCodeServerFailure, qs, nil)
	}
	ans, rc := filterAnswer(q, up, rules)
	if len(ans.addrs) > 0 && rules.restricted() && r.cfg.Allow != nil {
		if err := r.cfg.Allow(ctx, ans.addrs, ans.allowFor); err != nil {
			r.count(func(s *Stats) { s.UpstreamErrors++ })
			r.warn("dns: allow resolved addresses", "name", name, "err", err)
			return reply(dnsmessage.RCodeServerFailure, qs, nil)
		}
	}
	r.count(func(s *Stats) { s.Answered++ })
	r.log.Debug("dns: answered", "name", name, "id", h.ID, "rcode", rc, "addrs", len(ans.addrs), "cnames", len(ans.cnames),
		"upstream", upTook, "took", time.Since(began))
	return reply(rc, qs, &ans)
}

// forward asks the upstream for q (a fresh id, recursion desired), over
// UDP, and over TCP when the UDP answer was truncated; it returns the
// upstream's answer, checked to answer q.
func (r *Resolver) forward(ctx context.Context, q dnsmessage.Question) ([]byte, error) {
	upAddr := *r.upstream.Load()
	if !upAddr.IsValid() {
		return nil, errors.New("no upstream resolver configured")
	}
	return askUpstream(ctx, upAddr, q)
}

// askUpstream sends q to upstream (a fresh id, recursion desired) over
// UDP, and over TCP when the UDP answer was truncated; it returns the
// answer, checked to answer q.
func askUpstream(ctx context.Context, upAddr netip.AddrPort, q dnsmessage.Question) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	var idb [2]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	msg, err := b.Finish()
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	up := upAddr.String()
	resp, err := exchangeUDP(ctx, &d, up, msg, id, q)
	if errors.Is(err, errTruncated) {
		resp, err = exchangeTCP(ctx, &d, up, msg, id, q)
	}
	return resp, err
}

var errTruncated = errors.New("truncated")

func exchangeUDP(ctx context.Context, d *net.Dialer, addr string, msg []byte, id uint16, q dnsmessage.Question) ([]byte, error) {
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	buf := make([]byte, maxUpstreamUDP)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		h, ok := matches(buf[:n], id, q)
		if !ok {
			continue // not the answer to our query: keep waiting until the deadline
		}
		if h.Truncated {
			return nil, errTruncated
		}
		return buf[:n], nil
	}
}

func exchangeTCP(ctx context.Context, d *net.Dialer, addr string, msg []byte, id uint16, q dnsmessage.Question) ([]byte, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	out := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	if _, err := c.Write(append(out, msg...)); err != nil {
		return nil, err
	}
	var hdr [2]byte
	if _, err := readFull(c, hdr[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(hdr[:])) // at most 64 KiB by the format
	if _, err := readFull(c, buf); err != nil {
		return nil, err
	}
	if _, ok := matches(buf, id, q); !ok {
		return nil, errors.New("upstream answered another query")
	}
	return buf, nil
}

// matches checks that resp is a response with id to exactly question q.
func matches(resp []byte, id uint16, q dnsmessage.Question) (dnsmessage.Header, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil || !h.Response || h.ID != id {
		return h, false
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 || qs[0].Type != q.Type || qs[0].Class != q.Class || !sameName(qs[0].Name, q.Name) {
		return h, false
	}
	return h, true
}

func sameName(a, b dnsmessage.Name) bool {
	return NormalizeName(a.String()) == NormalizeName(b.String())
}
