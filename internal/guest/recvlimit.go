package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/pkg/sftp"
)

// ErrAnswerTooLarge is what an SFTP client's reads fail with once an
// armed RecvLimit is spent: the guest answered one request with more
// than the caller would hold.
var ErrAnswerTooLarge = errors.New("guest: answer over the receive limit")

// RecvLimit bounds what an SFTP client may receive while it is armed.
// pkg/sftp gathers some answers whole before returning them (a directory
// listing is read until the server says it has ended), so a hostile
// guest that never ends one would grow the host's memory without bound;
// arming a limit around such a call makes the client's reads fail
// instead, which ends the SFTP session. Unarmed, it counts nothing. Safe
// for concurrent use (the client reads on a goroutine of its own).
type RecvLimit struct {
	armed    atomic.Bool
	left     atomic.Int64
	used     atomic.Int64
	exceeded atomic.Bool
}

// Arm starts counting, allowing n more bytes.
func (l *RecvLimit) Arm(n int64) {
	l.used.Store(0)
	l.left.Store(n)
	l.armed.Store(true)
}

// Disarm stops counting and returns the bytes received while armed.
func (l *RecvLimit) Disarm() int64 {
	l.armed.Store(false)
	return l.used.Load()
}

// Exceeded reports whether an armed limit was ever spent.
func (l *RecvLimit) Exceeded() bool { return l.exceeded.Load() }

// Reader returns r counted against l.
func (l *RecvLimit) Reader(r io.Reader) io.Reader { return limitedReader{r: r, l: l} }

type limitedReader struct {
	r io.Reader
	l *RecvLimit
}

func (r limitedReader) Read(p []byte) (int, error) {
	l := r.l
	if l.exceeded.Load() {
		return 0, ErrAnswerTooLarge
	}
	if l.armed.Load() {
		left := l.left.Load()
		if left <= 0 {
			l.exceeded.Store(true)
			return 0, ErrAnswerTooLarge
		}
		p = p[:min(int64(len(p)), left)]
	}
	n, err := r.r.Read(p)
	if l.armed.Load() {
		l.left.Add(-int64(n))
		l.used.Add(int64(n))
	}
	return n, err
}

// MaxListing bounds the directory listings a tree copy holds at once (a
// directory's and its ancestors'), counted as the bytes the guest sent
// for them. pkg/sftp keeps a whole listing in memory before returning it,
// so without a bound a guest that never ends one would exhaust the
// host's. 32 MiB is about 200,000 entries of ordinary names; the memory
// it costs is about ten times what was received.
const MaxListing = 32 << 20

// ListDir is c.ReadDirContext(ctx, dir) received through lim (the
// client's own: SFTPLimited), allowing left bytes, and the bytes the
// listing took. A nil lim lists without a bound. A listing over left
// fails with ErrAnswerTooLarge and leaves c unusable.
func ListDir(ctx context.Context, c *sftp.Client, lim *RecvLimit, dir string, left int64) ([]os.FileInfo, int64, error) {
	if lim == nil {
		ents, err := c.ReadDirContext(ctx, dir)
		return ents, 0, err
	}
	lim.Arm(left)
	ents, err := c.ReadDirContext(ctx, dir)
	held := lim.Disarm()
	if lim.Exceeded() {
		return nil, 0, fmt.Errorf("the guest's listings take more than %d bytes: %w", MaxListing, ErrAnswerTooLarge)
	}
	return ents, held, err
}
