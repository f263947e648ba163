package guest

import (
	"bytes"
	"errors"
	"testing"
)

// TestLineWriterBounds: a guest that sends one endless line (or lines
// past the bound) makes the host stop parsing and drop the rest, holding
// no more than the bound.
func TestLineWriterBounds(t *testing.T) {
	tests := []struct {
		name    string
		writes  [][]byte
		lines   int
		wantErr error
	}{
		{"lines split across writes", [][]byte{[]byte(`{"a":`), []byte("1}\n{}\n{"), []byte("}\n")}, 3, nil},
		{"endless line", bytes.SplitAfter(bytes.Repeat([]byte("x"), 64<<10), []byte("x")), 0, ErrProcProtocol},
		{"long line then more", [][]byte{bytes.Repeat([]byte("y"), 2000), []byte("\n{}\n")}, 0, ErrProcProtocol},
		{"unterminated", [][]byte{[]byte("{}")}, 0, ErrProcProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := 0
			w := &lineWriter{max: 1024, line: func([]byte) error { lines++; return nil }}
			for _, p := range tt.writes {
				if n, err := w.Write(p); n != len(p) || err != nil {
					t.Fatalf("Write = %d, %v; want it to take everything", n, err)
				}
				if len(w.buf) > 1024 {
					t.Fatalf("buffered %d bytes, bound 1024", len(w.buf))
				}
			}
			err := w.finish()
			if !errors.Is(err, tt.wantErr) || lines != tt.lines {
				t.Fatalf("finish = %v after %d lines; want %v after %d", err, lines, tt.wantErr, tt.lines)
			}
		})
	}
}
