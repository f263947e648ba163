package egress

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// fakeUpstream is a DNS server on loopback answering from a table; it
// stands for the host's resolver and for a hostile one.
type fakeUpstream struct {
	addr    netip.AddrPort
	queries atomic.Int64
}

type fakeRecord struct {
	name  string
	cname string // a CNAME when set, else an A
	a     string
	ttl   uint32
}

func newFakeUpstream(t *testing.T, zone map[string][]fakeRecord) *fakeUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	u := &fakeUpstream{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.queries.Add(1)
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			recs, ok := zone[NormalizeName(q.Name.String())]
			rh := dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeSuccess}
			if !ok {
				rh.RCode = dnsmessage.RCodeNameError
			}
			b := dnsmessage.NewBuilder(nil, rh)
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			for _, r := range recs {
				hdr := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(r.name + "."), Class: dnsmessage.ClassINET, TTL: r.ttl}
				if r.cname != "" {
					b.CNAMEResource(hdr, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(r.cname + ".")})
				} else {
					b.AResource(hdr, dnsmessage.AResource{A: netip.MustParseAddr(r.a).As4()})
				}
			}
			msg, _ := b.Finish()
			pc.WriteTo(msg, from)
		}
	}()
	return u
}

type allowLog struct {
	mu    sync.Mutex
	addrs []netip.Addr
	ttls  []time.Duration
}

func (l *allowLog) allow(_ context.Context, addrs []netip.Addr, ttl time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addrs = append(l.addrs, addrs...)
	l.ttls = append(l.ttls, ttl)
	return nil
}

func (l *allowLog) get() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.addrs)
}

// startResolver serves r on loopback sockets of its own until the test
// ends and returns their address.
func startResolver(t *testing.T, r *Resolver) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return pc.LocalAddr().String()
}

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x1234, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

type reply struct {
	rcode  dnsmessage.RCode
	addrs  []string
	cnames int
	ttl    uint32
}

func ask(t *testing.T, server, network string, msg []byte) (reply, bool) {
	t.Helper()
	c, err := net.DialTimeout(network, server, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 65536)
	var n int
	if network == "tcp" {
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...))
		var hdr [2]byte
		if _, err := readFull(c, hdr[:]); err != nil {
			return reply{}, false
		}
		n = int(binary.BigEndian.Uint16(hdr[:]))
		if _, err := readFull(c, buf[:n]); err != nil {
			return reply{}, false
		}
	} else {
		c.Write(msg)
		if n, err = c.Read(buf); err != nil {
			return reply{}, false
		}
	}
	var p dnsmessage.Parser
	h, err := p.Start(buf[:n])
	if err != nil {
		t.Fatalf("unparsable reply: %v", err)
	}
	out := reply{rcode: h.RCode}
	p.SkipAllQuestions()
	for {
		rh, err := p.AnswerHeader()
		if err != nil {
			break
		}
		out.ttl = rh.TTL
		switch rh.Type {
		case dnsmessage.TypeA:
			a, _ := p.AResource()
			out.addrs = append(out.addrs, netip.AddrFrom4(a.A).String())
		default:
			p.SkipAnswer()
			out.cnames++
		}
	}
	return out, true
}

func TestResolver(t *testing.T) {
	up := newFakeUpstream(t, map[string][]fakeRecord{
		// A hostile upstream adds A records for names nobody asked for.
		"ok.test":        {{name: "ok.test", a: "203.0.113.10", ttl: 5}, {name: "evil.test", a: "198.51.100.66", ttl: 300}, {name: "ok.test.evil.test", a: "198.51.100.67", ttl: 300}},
		"a.example.org":  {{name: "a.example.org", cname: "edge.cdn.test", ttl: 600}, {name: "edge.cdn.test", a: "203.0.113.20", ttl: 7200}, {name: "other.cdn.test", a: "198.51.100.68"}},
		"loop.test":      {{name: "loop.test", cname: "loop2.test"}, {name: "loop2.test", cname: "loop.test"}},
		"private.test":   {{name: "private.test", a: "10.0.0.5", ttl: 60}, {name: "private.test", a: "192.168.1.1", ttl: 60}, {name: "private.test", a: "203.0.113.30", ttl: 60}},
		"lan.test":       {{name: "lan.test", a: "10.9.0.1", ttl: 60}},
		"denied.test":    {{name: "denied.test", a: "203.0.113.99", ttl: 60}},
		"bad.test":       {{name: "bad.test", a: "203.0.113.66", ttl: 60}},
		"open.test":      {{name: "open.test", a: "203.0.113.40", ttl: 60}},
		"example.org":    {{name: "example.org", a: "203.0.113.50", ttl: 60}},
		"many.allowed.x": nil,
	})
	m, err := NewMatcher([]string{"ok.test", "*.example.org", "loop.test", "private.test", "lan.test", "denied.test"})
	if err != nil {
		t.Fatal(err)
	}
	var log allowLog
	rules := Rules{Names: m, Allow: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, Deny: []netip.Prefix{netip.MustParsePrefix("203.0.113.99/32")}}
	r, err := NewResolver(Config{Listen: netip.MustParseAddrPort("127.0.0.1:53"), Upstream: up.addr, Allow: log.allow}, rules)
	if err != nil {
		t.Fatal(err)
	}
	srv := startResolver(t, r)

	for _, tt := range []struct {
		name   string
		typ    dnsmessage.Type
		rcode  dnsmessage.RCode
		addrs  []string
		cnames int
	}{
		{"ok.test.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"203.0.113.10"}, 0},
		{"OK.TEST.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"203.0.113.10"}, 0},
		{"a.example.org.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"203.0.113.20"}, 1},
		{"example.org.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil, 0}, // the apex is not below itself
		{"bad.test.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil, 0},
		{"loop.test.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, nil, 1},                         // the loop is cut
		{"private.test.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"203.0.113.30"}, 0}, // no rebinding onto private ranges
		{"lan.test.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"10.9.0.1"}, 0},         // unless an allowed CIDR names them
		{"denied.test.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, nil, 0},
		{"ok.test.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, nil, 0},
		{"ok.test.", dnsmessage.TypeTXT, dnsmessage.RCodeSuccess, nil, 0},
		{"x.example.org.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil, 0}, // the upstream has no such name
	} {
		for _, network := range []string{"udp", "tcp"} {
			got, ok := ask(t, srv, network, query(t, tt.name, tt.typ))
			if !ok {
				t.Fatalf("%s %s over %s: no reply", tt.name, tt.typ, network)
			}
			if got.rcode != tt.rcode || !slices.Equal(got.addrs, tt.addrs) || got.cnames != tt.cnames {
				t.Errorf("%s %s over %s = %+v; want %v %v with %d CNAMEs", tt.name, tt.typ, network, got, tt.rcode, tt.addrs, tt.cnames)
			}
		}
	}
	allowed := log.get()
	for _, a := range allowed {
		if !slices.Contains([]string{"203.0.113.10", "203.0.113.20", "203.0.113.30", "10.9.0.1"}, a.String()) {
			t.Errorf("%s became an allowance", a)
		}
	}
	log.mu.Lock()
	for _, ttl := range log.ttls {
		if ttl < MinAllowTTL || ttl > MaxAllowTTL {
			t.Errorf("allowance for %v, outside [%v, %v]", ttl, MinAllowTTL, MaxAllowTTL)
		}
	}
	log.mu.Unlock()
	if got, _ := ask(t, srv, "udp", query(t, "a.example.org.", dnsmessage.TypeA)); got.ttl > uint32(MaxAllowTTL/time.Second) || got.ttl != 600 {
		t.Errorf("ttl told = %d, want the chain's smallest, 600", got.ttl)
	}

	t.Run("replies in order", func(t *testing.T) {
		// busybox nslookup: A and AAAA with one id on one socket; the
		// first reply must be the A query's, though AAAA is answered
		// without asking the upstream.
		c, err := net.Dial("udp", srv)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(query(t, "a.example.org.", dnsmessage.TypeA))
		c.Write(query(t, "a.example.org.", dnsmessage.TypeAAAA))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for i, want := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
			buf := make([]byte, 1500)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("reply %d: %v", i, err)
			}
			var p dnsmessage.Parser
			p.Start(buf[:n])
			if q, err := p.Question(); err != nil || q.Type != want {
				t.Errorf("reply %d answers %v, want %v", i, q.Type, want)
			}
		}
	})
	t.Run("runtime change", func(t *testing.T) {
		before := up.queries.Load()
		m2, _ := NewMatcher([]string{"bad.test"})
		r.SetRules(Rules{Names: m2})
		if got, _ := ask(t, srv, "udp", query(t, "bad.test.", dnsmessage.TypeA)); got.rcode != dnsmessage.RCodeSuccess || len(got.addrs) != 1 {
			t.Errorf("bad.test after allowing it: %+v", got)
		}
		if got, _ := ask(t, srv, "udp", query(t, "ok.test.", dnsmessage.TypeA)); got.rcode != dnsmessage.RCodeNameError {
			t.Errorf("ok.test after disallowing it: %+v", got)
		}
		if n := up.queries.Load() - before; n != 1 {
			t.Errorf("%d upstream queries, want 1: a refused name is never forwarded", n)
		}
		r.SetRules(Rules{NoEgress: true})
		if got, _ := ask(t, srv, "udp", query(t, "bad.test.", dnsmessage.TypeA)); got.rcode != dnsmessage.RCodeNameError {
			t.Errorf("no egress: %+v", got)
		}
		r.SetRules(Rules{}) // the default: every name, the perimeter still filters
		if got, _ := ask(t, srv, "udp", query(t, "open.test.", dnsmessage.TypeA)); len(got.addrs) != 1 {
			t.Errorf("default policy: %+v", got)
		}
		if got, _ := ask(t, srv, "udp", query(t, "lan.test.", dnsmessage.TypeA)); len(got.addrs) != 0 {
			t.Errorf("default policy handed out a private address: %+v", got)
		}
		r.SetRules(rules)
	})
}

// TestResolverHostile: crafted queries neither crash nor stall the
// resolver, and a flood is cut to the rate limit.
func TestResolverHostile(t *testing.T) {
	up := newFakeUpstream(t, map[string][]fakeRecord{"ok.test": {{name: "ok.test", a: "203.0.113.10", ttl: 60}}})
	m, _ := NewMatcher([]string{"ok.test"})
	r, err := NewResolver(Config{Listen: netip.MustParseAddrPort("127.0.0.1:53"), Upstream: up.addr, Rate: 20, Burst: 40}, Rules{Names: m})
	if err != nil {
		t.Fatal(err)
	}
	srv := startResolver(t, r)
	valid := query(t, "ok.test.", dnsmessage.TypeA)
	header := func(id, flags, qd, an uint16) []byte {
		return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, id), flags), qd), an), 0), 0)
	}
	loop := append(header(1, 0x0100, 1, 0), 0xc0, 12, 0, 1, 0, 1) // a name that points at itself
	deep := header(2, 0x0100, 1, 0)
	for range 200 {
		deep = append(deep, 1, 'a')
	}
	deep = append(deep, 0, 0, 1, 0, 1) // a name of 400 bytes
	twoQ := append(append(header(3, 0x0100, 2, 0), valid[12:]...), valid[12:]...)
	resp := slices.Clone(valid)
	resp[2] |= 0x80 // QR: a response sent as a query
	for name, pkt := range map[string][]byte{
		"empty":          {},
		"one byte":       {0},
		"header only":    header(4, 0x0100, 1, 0),
		"compression":    loop,
		"long name":      deep,
		"two questions":  twoQ,
		"response":       resp,
		"truncated":      valid[:len(valid)-3],
		"huge":           make([]byte, 4000),
		"answer claimed": append(slices.Clone(valid[:12]), valid[12:]...)[:12],
	} {
		c, err := net.Dial("udp", srv)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(pkt)
		c.Close()
		// Over TCP too, with a length that lies.
		tc, err := net.Dial("tcp", srv)
		if err != nil {
			t.Fatal(err)
		}
		tc.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(pkt)+100)), pkt...))
		tc.Close()
		t.Logf("sent %s (%d bytes)", name, len(pkt))
	}
	if got, ok := ask(t, srv, "udp", valid); !ok || len(got.addrs) != 1 {
		t.Fatalf("after malformed packets: %+v, %v", got, ok)
	}
	if s := r.Stats(); s.Malformed < 5 {
		t.Errorf("stats %+v: want the malformed packets counted", s)
	}

	t.Run("flood", func(t *testing.T) {
		before := up.queries.Load()
		c, err := net.Dial("udp", srv)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		const n = 2000
		for range n {
			c.Write(valid)
		}
		elapsed := time.Since(start)
		s := r.Stats()
		// At most the burst plus what the rate refilled meanwhile (a wide
		// margin for a slow machine) reached the upstream path.
		bound := int64(40 + 20*elapsed.Seconds() + 20)
		if s.Limited == 0 {
			t.Errorf("stats %+v: a flood of %d queries was never limited", s, n)
		}
		// Wait for the admitted ones to be answered.
		deadline := time.Now().Add(10 * time.Second)
		for len(r.inflight) > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := up.queries.Load() - before; got > bound {
			t.Errorf("%d upstream queries for a flood of %d, want at most %d", got, n, bound)
		}
	})

	t.Run("tcp connections bounded", func(t *testing.T) {
		var conns []net.Conn
		for range maxTCPConns * 3 {
			c, err := net.Dial("tcp", srv)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		// The ones over the limit are closed at once.
		closed := 0
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var b [1]byte
			if _, err := c.Read(b[:]); err != nil {
				if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
					closed++
				}
			}
		}
		if closed < maxTCPConns {
			t.Errorf("%d of %d idle connections closed, want at least %d", closed, len(conns), maxTCPConns)
		}
	})
}

// TestMangled feeds mutations of a valid query to the resolver and of a
// valid answer to the answer filter: no panic, and no reply beyond its
// bound.
func TestMangled(t *testing.T) {
	m, _ := NewMatcher([]string{"*.test"})
	r, err := NewResolver(Config{Listen: netip.MustParseAddrPort("127.0.0.1:53"), Upstream: netip.MustParseAddrPort("127.0.0.1:9")}, Rules{NoEgress: true})
	if err != nil {
		t.Fatal(err)
	}
	valid := query(t, "ok.test.", dnsmessage.TypeA)
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true})
	b.EnableCompression()
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("ok.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	b.StartAnswers()
	for i := range 20 {
		b.CNAMEResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("ok.test."), Class: dnsmessage.ClassINET}, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("c.ok.test.")})
		b.AResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("c.ok.test."), Class: dnsmessage.ClassINET, TTL: uint32(i)}, dnsmessage.AResource{A: [4]byte{203, 0, 113, byte(i)}})
	}
	answer, _ := b.Finish()
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("ok.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	rules := &Rules{Names: m}
	seed := uint64(1)
	next := func() uint64 { seed = seed*6364136223846793005 + 1442695040888963407; return seed >> 33 }
	for range 20000 {
		qm, am := slices.Clone(valid), slices.Clone(answer)
		for range 1 + next()%4 {
			qm[next()%uint64(len(qm))] = byte(next())
			am[next()%uint64(len(am))] = byte(next())
		}
		qm, am = qm[:next()%uint64(len(qm)+1)], am[:next()%uint64(len(am)+1)]
		if out := r.answer(context.Background(), qm, maxUDPReply); len(out) > maxUDPReply {
			t.Fatalf("reply of %d bytes", len(out))
		}
		if f, _ := filterAnswer(q, am, rules); len(f.addrs) > maxAddrs || len(f.cnames) > maxCNAMEHops {
			t.Fatalf("filtered %d addresses, %d CNAMEs", len(f.addrs), len(f.cnames))
		}
	}
}
