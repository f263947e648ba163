package main

import (
	"testing"

	"github.com/smolvm/smolvm"
)

func TestParsePort(t *testing.T) {
	tests := []struct {
		in   string
		want portSpec
		ok   bool
	}{
		{"80", portSpec{"127.0.0.1", 0, 80}, true},
		{"9000:80", portSpec{"127.0.0.1", 9000, 80}, true},
		{"0.0.0.0:9000:80", portSpec{"0.0.0.0", 9000, 80}, true},
		{"0", portSpec{}, false},
		{"x:80", portSpec{}, false},
		{"nohost:1:80", portSpec{}, false},
		{"1:2:3:4", portSpec{}, false},
		{"70000", portSpec{}, false},
	}
	for _, tt := range tests {
		got, err := parsePort(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("%q: got %+v, %v", tt.in, got, err)
		}
	}
}

// TestPortSpecRoundTrip checks that what port expose prints is read back
// by parsePort and port close as the same forward.
func TestPortSpecRoundTrip(t *testing.T) {
	for _, p := range []portSpec{{"127.0.0.1", 34567, 80}, {"0.0.0.0", 1, 65535}, {"10.1.2.3", 8080, 8080}} {
		s := specOf(smolvm.PortForward{HostAddr: p.addr, HostPort: p.hostPort, GuestPort: p.guestPort}).String()
		for name, parse := range map[string]func(string) (portSpec, error){"parsePort": parsePort, "parseClosePort": parseClosePort} {
			if got, err := parse(s); err != nil || got != p {
				t.Errorf("%s(%q) = %+v, %v; want %+v", name, s, got, err, p)
			}
		}
	}
}

func TestParseClosePort(t *testing.T) {
	tests := []struct {
		in   string
		want portSpec
		ok   bool
	}{
		{"127.0.0.1:8080:80", portSpec{"127.0.0.1", 8080, 80}, true},
		{"8080:80", portSpec{"127.0.0.1", 8080, 80}, true},
		{"80", portSpec{"127.0.0.1", 0, 80}, true}, // the forward to guest port 80
		{"127.0.0.1:8080", portSpec{"127.0.0.1", 8080, 0}, true},
		{"0.0.0.0:8080", portSpec{"0.0.0.0", 8080, 0}, true},
		{"127.0.0.1:0", portSpec{}, false},
		{"127.0.0.1:x", portSpec{}, false},
		{"localhost:8080", portSpec{}, false},
		{"80:", portSpec{}, false},
		{"", portSpec{}, false},
	}
	for _, tt := range tests {
		got, err := parseClosePort(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("%q: got %+v, %v", tt.in, got, err)
		}
	}
}

func TestParseMountFlag(t *testing.T) {
	if m, err := parseMount("/srv/data:/data:rw"); err != nil || m != (smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data", Writable: true}) {
		t.Errorf("got %+v, %v", m, err)
	}
	for _, in := range []string{"", ":/data", "/a:/b:/c"} {
		if _, err := parseMount(in); err == nil {
			t.Errorf("--mount %q accepted", in)
		}
	}
}

func TestSplitRemote(t *testing.T) {
	tests := []struct {
		in       string
		id, path string
		remote   bool
	}{
		{"web:/etc/hosts", "web", "/etc/hosts", true},
		{"./file", "", "./file", false},
		{"/abs/a:b", "", "/abs/a:b", false},
		{"file", "", "file", false},
	}
	for _, tt := range tests {
		id, path, remote := splitRemote(tt.in)
		if id != tt.id || path != tt.path || remote != tt.remote {
			t.Errorf("%q: got %q %q %v", tt.in, id, path, remote)
		}
	}
}
