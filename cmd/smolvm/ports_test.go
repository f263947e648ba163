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

func TestParseMount(t *testing.T) {
	tests := []struct {
		in   string
		want smolvm.Mount
	}{
		{"/srv/data", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/mnt/data"}},
		{"/srv/data:rw", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/mnt/data", Writable: true}},
		{"/srv/data:/data", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data"}},
		{"/srv/data:/data:ro", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data"}},
		{"/srv/data:/data:rw", smolvm.Mount{HostPath: "/srv/data", GuestPath: "/data", Writable: true}},
	}
	for _, tt := range tests {
		got, err := parseMount(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("%q: got %+v, %v", tt.in, got, err)
		}
	}
	if _, err := parseMount("/a:/b:/c"); err == nil {
		t.Error("three paths accepted")
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
