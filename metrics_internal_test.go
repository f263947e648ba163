package smolvm

import (
	"strings"
	"testing"
	"time"
)

// A guest is root and may put anything in its /proc: the parsers take
// only what looks like the kernel's, and never panic.
func TestParseGuestMeminfo(t *testing.T) {
	const real = "MemTotal:         491732 kB\nMemFree:          402816 kB\nMemAvailable:     428136 kB\nBuffers:            1868 kB\n"
	tests := []struct {
		name, in     string
		total, avail int64
		bad          string
	}{
		{"real", real, 491732 << 10, 428136 << 10, ""},
		{"no newline at the end", "MemTotal: 2 kB\nMemAvailable: 1 kB", 2 << 10, 1 << 10, ""},
		{"empty", "", 0, 0, "empty"},
		{"no available", "MemTotal: 2 kB\n", 0, 0, "no MemTotal or MemAvailable"},
		{"long line", "MemTotal: 2 kB\nJunk: " + strings.Repeat("x", 200) + "\nMemAvailable: 1 kB\n", 0, 0, "longer than"},
		{"twice", "MemTotal: 2 kB\nMemTotal: 3 kB\nMemAvailable: 1 kB\n", 0, 0, "twice"},
		{"available above total", "MemTotal: 1 kB\nMemAvailable: 2 kB\n", 0, 0, "more memory available"},
		{"negative", "MemTotal: -2 kB\nMemAvailable: 1 kB\n", 0, 0, "bad value"},
		{"overflow", "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n", 0, 0, "bad value"},
		{"beyond 4 PiB", "MemTotal: 9223372036854775807 kB\nMemAvailable: 1 kB\n", 0, 0, "bad value"},
		{"no unit", "MemTotal: 2\nMemAvailable: 1 kB\n", 0, 0, "want"},
		{"other unit", "MemTotal: 2 MB\nMemAvailable: 1 kB\n", 0, 0, "want"},
		{"no key", "MemTotal: 2 kB\ngarbage\n", 0, 0, "no key"},
		{"binary", "MemTotal:\x00\xff kB\nMemAvailable: 1 kB\n", 0, 0, "bad value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := parseGuestMeminfo([]byte(tt.in))
			if tt.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("got %+v, %v; want an error mentioning %q", g, err, tt.bad)
				}
				return
			}
			if err != nil || g.MemTotal != tt.total || g.MemAvailable != tt.avail {
				t.Fatalf("got %+v, %v; want total %d, available %d", g, err, tt.total, tt.avail)
			}
		})
	}
}

func TestParseGuestLoadavg(t *testing.T) {
	for in, ok := range map[string]bool{
		"0.34 0.08 0.03 1/60 123\n": true,
		"1 2 3":                     true,
		"0.1 0.2":                   false,
		"-1 0 0 1/1 1":              false,
		"NaN 0 0 1/1 1":             false,
		"1e300 0 0":                 false,
		strings.Repeat("1 ", 100):   false,
		"1 2 3\n4 5 6\n":            false,
	} {
		_, _, _, err := parseGuestLoadavg([]byte(in))
		if (err == nil) != ok {
			t.Errorf("parseGuestLoadavg(%.30q): err = %v, want ok %v", in, err, ok)
		}
	}
}

func FuzzParseGuestMeminfo(f *testing.F) {
	f.Add([]byte("MemTotal: 2 kB\nMemAvailable: 1 kB\n"))
	f.Add([]byte("MemTotal:\x00\xff kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := parseGuestMeminfo(b)
		if err == nil && (g.MemAvailable > g.MemTotal || g.MemAvailable < 0) {
			t.Fatalf("accepted %+v", g)
		}
		parseGuestLoadavg(b)
	})
}

func TestParseStatCPU(t *testing.T) {
	// pid (comm with ") (" in it) state ppid ... utime=250 stime=50 ...
	stat := "123 (qemu) (x) S 1 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 99 0 0\n"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU([]byte("123 (qemu) S 1")); err == nil {
		t.Fatal("a short stat line parsed")
	}
}
