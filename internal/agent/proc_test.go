package agent

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestRing: the ring keeps the last procRingSize bytes with their streams
// and offsets, and says what a reader starting earlier missed.
func TestRing(t *testing.T) {
	tests := []struct {
		name        string
		writes      []int // sizes, alternating stdout and stderr
		from        int64
		wantDropped int64
		wantBytes   int
	}{
		{"empty", nil, 0, 0, 0},
		{"small", []int{10, 5}, 0, 0, 15},
		{"from the middle", []int{10, 5}, 12, 0, 3},
		{"from the end", []int{10, 5}, 15, 0, 0},
		{"overflow", []int{procRingSize, 100}, 0, 100, procRingSize},
		{"one huge write", []int{3 * procRingSize}, 0, 2 * procRingSize, procRingSize},
		{"many chunks", repeat(procChunk, 100), 0, 100*procChunk - procRingSize, procRingSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r ring
			var total int64
			for i, n := range tt.writes {
				s := byte('o')
				if i%2 == 1 {
					s = 'e'
				}
				r.write(s, bytes.Repeat([]byte{s}, n))
				total += int64(n)
			}
			if r.total != total || r.size > procRingSize {
				t.Fatalf("total %d size %d; want %d and at most %d", r.total, r.size, total, procRingSize)
			}
			chunks, dropped := r.from(tt.from)
			n := 0
			next := tt.from + dropped
			for _, c := range chunks {
				if c.off != next {
					t.Fatalf("chunk at %d, want %d", c.off, next)
				}
				if bytes.IndexFunc(c.data, func(b rune) bool { return byte(b) != c.stream }) >= 0 {
					t.Fatalf("chunk of stream %c holds another stream's bytes", c.stream)
				}
				n += len(c.data)
				next += int64(len(c.data))
			}
			if dropped != tt.wantDropped || n != tt.wantBytes {
				t.Fatalf("from(%d) = %d bytes, %d dropped; want %d, %d", tt.from, n, dropped, tt.wantBytes, tt.wantDropped)
			}
		})
	}
}

func repeat(n, times int) []int {
	out := make([]int, times)
	for i := range out {
		out[i] = n
	}
	return out
}

func TestParseSignal(t *testing.T) {
	tests := map[string]int{"TERM": 15, "sigkill": 9, "int": 2, "15": 15, "USR1": 10, "NOPE": 0, "0": 0, "65": 0, "": 0}
	for in, want := range tests {
		sig, err := parseSignal(in)
		if (err != nil) != (want == 0) || int(sig) != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, sig, err, want)
		}
	}
}

func TestAbbreviate(t *testing.T) {
	big := strings.Repeat("x", 3<<10)
	for _, tt := range []struct {
		name      string
		in        procInfo
		wantArgv  int // bytes of all words
		wantWords int
		wantShell int
		truncated bool
	}{
		{"short argv", procInfo{Argv: []string{"ls", "-l"}}, 4, 2, 0, false},
		{"long argv", procInfo{Argv: []string{"echo", big, big, big}}, maxListCommand, 3, 0, true},
		{"one huge word", procInfo{Argv: []string{strings.Repeat("é", 4<<20)}}, maxListCommand, 1, 0, true},
		{"long shell", procInfo{Shell: strings.Repeat("a", 2<<20)}, 0, 0, maxListCommand, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.abbreviate()
			n := 0
			for _, w := range in.Argv {
				n += len(w)
				if !utf8.ValidString(w) {
					t.Errorf("a word cut inside a rune")
				}
			}
			if n != tt.wantArgv && !(tt.truncated && n <= maxListCommand && n > maxListCommand-4) {
				t.Errorf("argv bytes %d, want %d", n, tt.wantArgv)
			}
			if len(in.Argv) != tt.wantWords || len(in.Shell) != tt.wantShell || in.Truncated != tt.truncated {
				t.Errorf("got %d words, shell %d bytes, truncated %v", len(in.Argv), len(in.Shell), in.Truncated)
			}
		})
	}
}
