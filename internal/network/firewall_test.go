package network

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/smolvm/smolvm/internal/egress"
)

func TestVMRulesValidate(t *testing.T) {
	ok := VMRules{ID: "vm-1", TAP: TAPName("vm-1"), GuestIP: netip.MustParseAddr("172.29.0.2")}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid rules: %v", err)
	}
	for name, mod := range map[string]func(*VMRules){
		"empty id":        func(r *VMRules) { r.ID = "" },
		"space in id":     func(r *VMRules) { r.ID = "a b" },
		"long id":         func(r *VMRules) { r.ID = strings.Repeat("x", 100) },
		"tap not smol":    func(r *VMRules) { r.TAP = "eth0" },
		"tap just prefix": func(r *VMRules) { r.TAP = "smol" },
		"tap wildcard":    func(r *VMRules) { r.TAP = "smol*" },
		"tap path":        func(r *VMRules) { r.TAP = "smol/../x" },
		"tap too long":    func(r *VMRules) { r.TAP = "smol0123456789ab" },
		"guest ipv6":      func(r *VMRules) { r.GuestIP = netip.MustParseAddr("fd00::2") },
		"guest missing":   func(r *VMRules) { r.GuestIP = netip.Addr{} },
	} {
		r := ok
		mod(&r)
		if err := r.Validate(); !errors.Is(err, ErrInvalidRule) {
			t.Errorf("%s: %v, want ErrInvalidRule", name, err)
		}
	}
}

func TestPortForwardNormalize(t *testing.T) {
	guest := netip.MustParseAddr("172.29.0.2")
	p, err := PortForward{VMID: "a", HostPort: 8080, GuestIP: guest, GuestPort: 80}.normalize()
	if err != nil || p.HostAddr != DefaultForwardAddr {
		t.Errorf("default host address: %v, %v", p.HostAddr, err)
	}
	p, err = PortForward{VMID: "a", HostAddr: netip.MustParseAddr("::ffff:10.0.0.1"), HostPort: 1, GuestIP: guest, GuestPort: 1}.normalize()
	if err != nil || p.HostAddr != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("mapped address: %v, %v", p.HostAddr, err)
	}
	for name, bad := range map[string]PortForward{
		"no id":      {HostPort: 1, GuestIP: guest, GuestPort: 1},
		"host port":  {VMID: "a", GuestIP: guest, GuestPort: 1},
		"guest port": {VMID: "a", HostPort: 1, GuestIP: guest},
		"ipv6 host":  {VMID: "a", HostAddr: netip.IPv6Loopback(), HostPort: 1, GuestIP: guest, GuestPort: 1},
		"no guest":   {VMID: "a", HostPort: 1, GuestPort: 1},
	} {
		if _, err := bad.normalize(); !errors.Is(err, ErrInvalidRule) {
			t.Errorf("%s: %v, want ErrInvalidRule", name, err)
		}
	}
}

func TestParseComment(t *testing.T) {
	host := netip.MustParseAddrPort("0.0.0.0:8443")
	for _, tt := range []struct {
		comment string
		want    TaggedRule
		ok      bool
	}{
		{vmComment("vm-a"), TaggedRule{VMID: "vm-a", Kind: RuleVM}, true},
		{forwardComment("vm-a", host), TaggedRule{VMID: "vm-a", Kind: RuleForward, HostAddr: host.Addr(), HostPort: 8443}, true},
		{baseComment, TaggedRule{}, false},
		{"", TaggedRule{}, false},
		{"someone else's rule", TaggedRule{}, false},
		{"vm:x fwd:nonsense", TaggedRule{}, false},
	} {
		got, ok := parseComment(tt.comment)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("parseComment(%q) = %+v, %v; want %+v, %v", tt.comment, got, ok, tt.want, tt.ok)
		}
	}
}

// Every per-VM rule must carry its tags, or RemoveVM would leave it behind.
func TestRulesTagged(t *testing.T) {
	l := newLayout()
	guest := netip.MustParseAddr("172.29.0.2")
	check := func(name string, want TaggedRule, n int, rules []ruleWithChain) {
		t.Helper()
		if len(rules) != n {
			t.Errorf("%s: %d rules, want %d", name, len(rules), n)
		}
		for _, r := range rules {
			got, ok := parseComment(r.comment)
			if !ok || got != want {
				t.Errorf("%s: rule in %s tagged %q", name, r.chain, r.comment)
			}
			if !isTagged(l, r.chain) {
				t.Errorf("%s: rule in base chain %s: EnsureBase would flush it", name, r.chain)
			}
		}
	}
	check("egress", TaggedRule{VMID: "a", Kind: RuleVM}, 4+len(egress.Perimeter), chained(l.vmRules(VMRules{ID: "a", TAP: "smol1", GuestIP: guest, Egress: true})))
	check("no egress", TaggedRule{VMID: "a", Kind: RuleVM}, 2, chained(l.vmRules(VMRules{ID: "a", TAP: "smol1", GuestIP: guest})))
	for _, host := range []string{"0.0.0.0", "127.0.0.1", "10.1.2.3"} {
		addr := netip.MustParseAddr(host)
		p := PortForward{VMID: "a", HostAddr: addr, HostPort: 8080, GuestIP: guest, GuestPort: 80}
		n := 3
		if addr.IsLoopback() {
			n = 2
		}
		check("forward "+host, TaggedRule{VMID: "a", Kind: RuleForward, HostAddr: addr, HostPort: 8080}, n, chained(l.forwardRules(p)))
	}
	for _, r := range chained(l.baseRules([]string{"eth0"})) {
		if r.comment != baseComment || isTagged(l, r.chain) {
			t.Errorf("base rule in %s: %q", r.chain, r.comment)
		}
	}
}

// A loopback forward must never be reachable from outside: no prerouting
// rule for it, and the every-address forward excludes 127.0.0.0/8 there.
func TestForwardLoopbackNotFromOutside(t *testing.T) {
	l := newLayout()
	guest := netip.MustParseAddr("172.29.0.2")
	for _, r := range l.forwardRules(PortForward{VMID: "a", HostAddr: DefaultForwardAddr, HostPort: 1, GuestIP: guest, GuestPort: 1}) {
		if r.Chain.Name == chainVMPrerouting {
			t.Errorf("loopback forward has a prerouting rule")
		}
	}
	for _, r := range l.forwardRules(PortForward{VMID: "a", HostAddr: netip.IPv4Unspecified(), HostPort: 1, GuestIP: guest, GuestPort: 1}) {
		if r.Chain.Name != chainVMPrerouting {
			continue
		}
		excluded := false
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Cmp); ok && c.Op == expr.CmpOpNeq && string(c.Data) == "\x7f\x00\x00\x00" {
				excluded = true
			}
		}
		if !excluded {
			t.Errorf("0.0.0.0 forward's prerouting rule does not exclude 127.0.0.0/8")
		}
	}
}

type ruleWithChain struct{ chain, comment string }

func chained(rules []*nftables.Rule) []ruleWithChain {
	var out []ruleWithChain
	for _, r := range rules {
		out = append(out, ruleWithChain{r.Chain.Name, ruleComment(r)})
	}
	return out
}

func isTagged(l *layout, chain string) bool {
	for _, c := range l.tagged {
		if c.Name == chain {
			return true
		}
	}
	return false
}
