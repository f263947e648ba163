package mcpserver

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// cappedBuffer keeps the first limit bytes written to it and counts the
// rest: a guest that prints without end costs the server no more than
// limit bytes of memory, and the command still runs to completion.
type cappedBuffer struct {
	limit int
	buf   []byte
	total int64
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.total += int64(len(p))
	if room := b.limit - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *cappedBuffer) truncated() bool { return b.total > int64(len(b.buf)) }

// text renders guest bytes for an agent: text is always valid UTF-8
// (invalid bytes become U+FFFD), and when the bytes were not valid UTF-8
// b64 carries them exactly. A multi-byte character cut at the cap is
// dropped rather than counted as invalid.
func text(p []byte, cut bool) (text, b64 string) {
	if cut {
		p = trimPartialRune(p)
	}
	if utf8.Valid(p) {
		return string(p), ""
	}
	return string([]rune(string(p))), base64.StdEncoding.EncodeToString(p)
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of p.
func trimPartialRune(p []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(p); i++ {
		c := p[len(p)-i]
		if c < utf8.RuneSelf {
			return p // ASCII: nothing pending
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(p[len(p)-i:]) {
				return p[:len(p)-i]
			}
			return p
		}
	}
	return p
}

// cutNote is appended to output that was cut, so that an agent reading
// only the text still sees it.
func cutNote(kept int, total int64, what string) string {
	return fmt.Sprintf("\n[smolvm: %s cut: kept the first %d of %d bytes; %s]", what, kept, total,
		"raise max_output_bytes, or redirect the output to a file and page through it with read_file")
}

// errEnough stops a read once enough bytes came.
var errEnough = errors.New("enough bytes read")

// window keeps bytes [offset, offset+limit) of what is written to it, and
// one more to tell that the source goes on; then it fails the write with
// errEnough so the copy stops early.
type window struct {
	offset, limit int64
	skipped       int64
	buf           []byte
}

func (w *window) Write(p []byte) (int, error) {
	n := len(p)
	if skip := w.offset - w.skipped; skip > 0 {
		s := min(skip, int64(len(p)))
		w.skipped += s
		p = p[s:]
	}
	room := w.limit + 1 - int64(len(w.buf))
	w.buf = append(w.buf, p[:min(room, int64(len(p)))]...)
	if int64(len(w.buf)) > w.limit {
		return n, errEnough
	}
	return n, nil
}

// data is what the window holds, and whether the source went on past it.
func (w *window) data() ([]byte, bool) {
	if int64(len(w.buf)) > w.limit {
		return w.buf[:w.limit], true
	}
	return w.buf, false
}

// randomSuffix is 8 random lowercase letters and digits for generated ids.
func randomSuffix() string { return strings.ToLower(rand.Text()[:8]) }
