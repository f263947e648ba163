package guest

import "bytes"

// LimitedBuffer keeps the first Limit bytes written to it and counts the
// rest away. Writes never fail: a writer that failed would stop the copy
// from the session, the channel window would fill, and the guest's command
// would block forever on a full pipe instead of finishing.
type LimitedBuffer struct {
	Limit     int64
	Truncated bool // bytes past Limit were dropped
	buf       bytes.Buffer
}

func (b *LimitedBuffer) Write(p []byte) (int, error) {
	room := b.Limit - int64(b.buf.Len())
	if room <= 0 {
		b.Truncated = b.Truncated || len(p) > 0
		return len(p), nil
	}
	keep := p
	if int64(len(keep)) > room {
		keep = keep[:room]
		b.Truncated = true
	}
	b.buf.Write(keep)
	return len(p), nil
}

// Bytes returns what was kept.
func (b *LimitedBuffer) Bytes() []byte { return b.buf.Bytes() }

// String returns what was kept.
func (b *LimitedBuffer) String() string { return b.buf.String() }
