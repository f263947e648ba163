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
