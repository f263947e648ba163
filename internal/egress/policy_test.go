package egress

import (
	"errors"
	"net/netip"
	"testing"
)

func TestMatcher(t *testing.T) {
	m, err := NewMatcher([]string{"ok.test", "*.example.org", "API.Corp.Test."})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"ok.test", true},
		{"OK.Test.", true},
		{"sub.ok.test", false}, // exact names match only themselves
		{"example.org", false}, // a wildcard does not match its apex
		{"a.example.org", true},
		{"a.b.example.org", true},
		{"badexample.org", false},
		{"api.corp.test", true},
		{"", false},
		{".", false},
		{"bad.test", false},
	} {
		if got := m.Match(tt.name); got != tt.want {
			t.Errorf("Match(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	for _, ok := range []string{"ok.test", "*.example.org", "a-b.c_d.test", "x.", "localhost"} {
		if err := ValidatePattern(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "*", "*.", "a.*.org", "**.org", "*example.org", "a..b", "-a.test", "a-.test",
		"sp ace.test", "ü.test", "a/b", string(make([]byte, 300)), "x." + string(make([]byte, 64))} {
		if err := ValidatePattern(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want ErrInvalid", bad, err)
		}
	}
	many := make([]string, MaxEntries+1)
	for i := range many {
		many[i] = "a.test"
	}
	if _, err := NewMatcher(many); !errors.Is(err, ErrInvalid) {
		t.Errorf("%d patterns: %v, want ErrInvalid", len(many), err)
	}
}

func TestParseCIDR(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{" 203.0.113.7 ", "203.0.113.7/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
	} {
		got, err := ParseCIDR(tt.in)
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseCIDR(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "10.1.2.3/8", "fd00::/8", "::1", "example.org", "10.0.0.0/8/8"} {
		if _, err := ParseCIDR(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseCIDR(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

func TestPerimeter(t *testing.T) {
	for a, want := range map[string]bool{
		"10.1.2.3": true, "172.20.0.1": true, "192.168.1.1": true, "100.64.0.1": true,
		"169.254.169.254": true, "127.0.0.1": true, "198.18.0.2": true, "224.0.0.1": true,
		"255.255.255.255": true, "203.0.113.5": false, "198.51.100.1": false, "1.1.1.1": false,
		"::ffff:10.0.0.1": true, "2001:db8::1": true,
	} {
		if got := InPerimeter(netip.MustParseAddr(a)); got != want {
			t.Errorf("InPerimeter(%s) = %v, want %v", a, got, want)
		}
	}
}
