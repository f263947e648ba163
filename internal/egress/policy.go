// Package egress holds what a VM's egress policy needs on the host besides
// firewall rules: the parsing and matching of allowed names and CIDRs, the
// default perimeter, and the DNS resolver that answers a guest only for
// allowed names and lets the firewall accept the addresses it handed out.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrInvalid is the error of a malformed name, CIDR or address.
var ErrInvalid = errors.New("invalid egress policy")

// Bounds of a policy: each list holds at most MaxEntries items.
const (
	MaxEntries  = 256
	maxNameLen  = 253
	maxLabelLen = 63
)

// Perimeter lists the destinations a VM reaches only when an allowed CIDR
// names them: private and shared networks (RFC 1918, CGNAT 100.64/10, the
// benchmark range 198.18/15), loopback, link-local (cloud metadata), "this
// network", IETF protocol assignments, multicast and reserved space. The
// firewall drops them by default, and the resolver never hands out an
// address in them (no DNS rebinding onto the host's LAN).
var Perimeter = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// InPerimeter reports whether a is in one of the Perimeter ranges.
func InPerimeter(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range Perimeter {
		if p.Contains(a) {
			return true
		}
	}
	return !a.Is4() // guests have no IPv6
}

// ParseCIDR parses an IPv4 CIDR ("10.0.0.0/8") or a single IPv4 address
// (a /32). IPv6 is refused: guests have no IPv6. A prefix with host bits
// set is refused too, so "10.1.2.3/8" is not silently read as 10.0.0.0/8.
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%w: CIDR %q: want an IPv4 network such as 203.0.113.0/24 or a single address", ErrInvalid, s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%w: CIDR %q: want an IPv4 network such as 203.0.113.0/24 or a single address", ErrInvalid, s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if !p.Addr().Is4() {
		return p, fmt.Errorf("%w: CIDR %q: IPv6 is unsupported (guests have no IPv6); give an IPv4 network", ErrInvalid, s)
	}
	if p.Masked() != p {
		return p, fmt.Errorf("%w: CIDR %q has host bits set: did you mean %s?", ErrInvalid, s, p.Masked())
	}
	return p, nil
}

// NormalizeName lowercases a domain name or pattern and strips one
// trailing dot.
func NormalizeName(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}

// ValidatePattern checks an allowed name: a domain name ("api.example.org")
// or a wildcard "*.example.org", which matches every name below
// example.org but not example.org itself. Labels are letters, digits, '-'
// and '_' (1-63 characters); the name is at most 253 characters.
func ValidatePattern(s string) error {
	n := NormalizeName(s)
	base := strings.TrimPrefix(n, "*.")
	if base == "" || strings.Contains(base, "*") {
		return fmt.Errorf("%w: domain %q: want a name such as example.org, or *.example.org for every name below it", ErrInvalid, s)
	}
	if err := validName(base); err != nil {
		return fmt.Errorf("%w: domain %q: %s", ErrInvalid, s, err)
	}
	return nil
}

func validName(n string) error {
	if len(n) > maxNameLen {
		return fmt.Errorf("longer than %d characters", maxNameLen)
	}
	labels := strings.Split(n, ".")
	for _, l := range labels {
		if l == "" || len(l) > maxLabelLen {
			return fmt.Errorf("each label (between dots) must have 1-%d characters", maxLabelLen)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("label %q: only letters, digits, '-' and '_'", l)
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q must not start or end with '-'", l)
		}
	}
	return nil
}

// Matcher says whether a name is allowed by a list of patterns.
type Matcher struct {
	exact  map[string]bool
	suffix []string // ".example.org" for "*.example.org"
}

// NewMatcher validates patterns and returns their matcher.
func NewMatcher(patterns []string) (*Matcher, error) {
	if len(patterns) > MaxEntries {
		return nil, fmt.Errorf("%w: %d domains: at most %d", ErrInvalid, len(patterns), MaxEntries)
	}
	m := &Matcher{exact: map[string]bool{}}
	for _, p := range patterns {
		if err := ValidatePattern(p); err != nil {
			return nil, err
		}
		n := NormalizeName(p)
		if s, ok := strings.CutPrefix(n, "*"); ok {
			m.suffix = append(m.suffix, s)
		} else {
			m.exact[n] = true
		}
	}
	return m, nil
}

// Match reports whether name (any case, trailing dot or not) is allowed.
func (m *Matcher) Match(name string) bool {
	n := NormalizeName(name)
	if n == "" || len(n) > maxNameLen {
		return false
	}
	if m.exact[n] {
		return true
	}
	for _, s := range m.suffix {
		if len(n) > len(s) && strings.HasSuffix(n, s) {
			return true
		}
	}
	return false
}

// Empty reports whether the matcher allows no name at all.
func (m *Matcher) Empty() bool { return len(m.exact) == 0 && len(m.suffix) == 0 }
