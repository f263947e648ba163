package egress

import (
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// filtered is what of an upstream answer reaches the guest.
type filtered struct {
	cnames []dnsmessage.Resource // the chain from the asked name, in order
	addrs  []netip.Addr
	// ttl is told to the guest; allowFor is how long the addresses stay
	// allowed (never shorter than ttl).
	ttl, allowFor time.Duration
	lastName      dnsmessage.Name // the owner of the addresses: the chain's end
}

// filterAnswer keeps of the upstream answer resp only what answers q:
// the CNAME chain that starts at the asked name (at most maxCNAMEHops)
// and the A records of the names on it, minus addresses the rules do not
// hand out. Records for any other name (an upstream stuffing extra A
// records into the answer) are ignored, so they never become
// allowances. The rcode is the upstream's, NOERROR or NXDOMAIN; any other
// becomes SERVFAIL.
func filterAnswer(q dnsmessage.Question, resp []byte, rules *Rules) (filtered, dnsmessage.RCode) {
	var out filtered
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		return out, dnsmessage.RCodeServerFailure
	}
	switch h.RCode {
	case dnsmessage.RCodeSuccess, dnsmessage.RCodeNameError:
	default:
		return out, dnsmessage.RCodeServerFailure
	}
	if err := p.SkipAllQuestions(); err != nil {
		return out, dnsmessage.RCodeServerFailure
	}
	type rec struct {
		name   string
		cname  dnsmessage.Name
		a      netip.Addr
		ttl    uint32
		isName bool
	}
	var recs []rec
	for range maxAnswers {
		rh, err := p.AnswerHeader()
		if err != nil {
			break // no more answers, or a malformed one: what came before stands
		}
		if rh.Class != dnsmessage.ClassINET {
			p.SkipAnswer()
			continue
		}
		name := NormalizeName(rh.Name.String())
		switch rh.Type {
		case dnsmessage.TypeA:
			a, err := p.AResource()
			if err != nil {
				return out, dnsmessage.RCodeServerFailure
			}
			recs = append(recs, rec{name: name, a: netip.AddrFrom4(a.A), ttl: rh.TTL})
		case dnsmessage.TypeCNAME:
			c, err := p.CNAMEResource()
			if err != nil {
				return out, dnsmessage.RCodeServerFailure
			}
			recs = append(recs, rec{name: name, cname: c.CNAME, ttl: rh.TTL, isName: true})
		default:
			if err := p.SkipAnswer(); err != nil {
				return out, dnsmessage.RCodeServerFailure
			}
		}
	}
	ttl := uint32(MaxAllowTTL / time.Second)
	cur := NormalizeName(q.Name.String())
	curName := q.Name
	onChain := map[string]bool{cur: true}
	for hop := 0; ; hop++ {
		next := -1
		for i, r := range recs {
			if r.name == cur && r.isName {
				next = i
				break
			}
		}
		if next < 0 || hop >= maxCNAMEHops {
			break
		}
		r := recs[next]
		target := NormalizeName(r.cname.String())
		if onChain[target] {
			break // a loop
		}
		out.cnames = append(out.cnames, dnsmessage.Resource{
			Header: dnsmessage.ResourceHeader{Name: curName, Type: dnsmessage.TypeCNAME, Class: dnsmessage.ClassINET},
			Body:   &dnsmessage.CNAMEResource{CNAME: r.cname},
		})
		ttl = min(ttl, r.ttl)
		onChain[target] = true
		cur, curName = target, r.cname
	}
	// Only the end of the chain has the addresses.
	for _, r := range recs {
		if r.isName || r.name != cur || len(out.addrs) >= maxAddrs {
			continue
		}
		if !rules.handsOut(r.a) {
			continue
		}
		out.addrs = append(out.addrs, r.a)
		ttl = min(ttl, r.ttl)
	}
	t := time.Duration(ttl) * time.Second
	out.allowFor = min(max(t, MinAllowTTL), MaxAllowTTL)
	out.ttl = min(t, out.allowFor)
	out.lastName = curName
	return out, h.RCode
}

// buildReply answers the query with header h: rcode, the question, and
// ans (may be nil). A reply larger than size is sent without its records
// and with TC set, so the guest asks again over TCP.
func buildReply(h dnsmessage.Header, rc dnsmessage.RCode, qs []dnsmessage.Question, ans *filtered, size int) []byte {
	b, err := encodeReply(h, rc, qs, ans, false)
	if err == nil && len(b) <= size {
		return b
	}
	b, err = encodeReply(h, rc, qs, nil, true)
	if err != nil {
		return nil
	}
	return b
}

func encodeReply(qh dnsmessage.Header, rc dnsmessage.RCode, qs []dnsmessage.Question, ans *filtered, tc bool) ([]byte, error) {
	h := dnsmessage.Header{
		ID: qh.ID, Response: true, OpCode: qh.OpCode, RecursionDesired: qh.RecursionDesired,
		RecursionAvailable: true, RCode: rc, Truncated: tc,
	}
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	for _, q := range qs {
		if err := b.Question(q); err != nil {
			return nil, err
		}
	}
	if ans != nil {
		if err := b.StartAnswers(); err != nil {
			return nil, err
		}
		ttl := uint32(ans.ttl / time.Second)
		for _, c := range ans.cnames {
			c.Header.TTL = ttl
			if err := b.CNAMEResource(c.Header, *c.Body.(*dnsmessage.CNAMEResource)); err != nil {
				return nil, err
			}
		}
		for _, a := range ans.addrs {
			rh := dnsmessage.ResourceHeader{Name: ans.lastName, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: ttl}
			if err := b.AResource(rh, dnsmessage.AResource{A: a.As4()}); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}
