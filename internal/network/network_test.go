package network

import (
	"net/netip"
	"testing"
)

func TestPoolAddrs(t *testing.T) {
	p := Pool{Prefix: netip.MustParsePrefix("172.29.0.0/16")}
	tests := []struct {
		idx         int
		host, guest string
		wantErr     bool
	}{
		{idx: 0, host: "172.29.0.1/30", guest: "172.29.0.2/30"},
		{idx: 1, host: "172.29.0.5/30", guest: "172.29.0.6/30"},
		{idx: 64, host: "172.29.1.1/30", guest: "172.29.1.2/30"},
		{idx: 16383, host: "172.29.255.253/30", guest: "172.29.255.254/30"},
		{idx: 16384, wantErr: true},
		{idx: -1, wantErr: true},
	}
	for _, tt := range tests {
		host, guest, err := p.Addrs(tt.idx)
		if (err != nil) != tt.wantErr {
			t.Fatalf("idx %d: err %v", tt.idx, err)
		}
		if err == nil && (host.String() != tt.host || guest.String() != tt.guest) {
			t.Errorf("idx %d: got %s %s, want %s %s", tt.idx, host, guest, tt.host, tt.guest)
		}
	}
	if p.Size() != 16384 {
		t.Errorf("size %d", p.Size())
	}
}

func TestParsePool(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"10.200.0.0/16", true}, {"10.200.0.5/24", true}, {"10.0.0.0/31", false}, {"fd00::/64", false}, {"nope", false},
	} {
		if _, err := ParsePool(tt.in); (err == nil) != tt.ok {
			t.Errorf("%q: err %v", tt.in, err)
		}
	}
}

func TestNames(t *testing.T) {
	if n := TAPName("some-very-long-vm-identifier-that-is-long"); len(n) > 15 || n[:4] != "smol" {
		t.Errorf("TAP name %q: must fit IFNAMSIZ and start with smol", n)
	}
	if TAPName("a") == TAPName("b") || MAC("a") == MAC("b") || MAC("a") != MAC("a") {
		t.Error("names must be stable and distinct")
	}
	if m := MAC("a"); m[1] != '2' && m[1] != '6' && m[1] != 'a' && m[1] != 'e' {
		t.Errorf("MAC %s is not locally administered", m)
	}
}
