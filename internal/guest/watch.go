package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
)

// WatchEvent is one change the guest reports in a watched directory.
// Paths are relative to the watched directory ("." is the directory
// itself), slash-separated.
type WatchEvent struct {
	Op      string `json:"op"`             // create, modify, remove, rename, overflow (and error, ending the stream)
	Path    string `json:"path,omitempty"` // the new path for rename
	Old     string `json:"old,omitempty"`  // rename: the old path
	Dir     bool   `json:"dir,omitempty"`
	Message string `json:"message,omitempty"`
	Errno   string `json:"errno,omitempty"`
	// Dropped is, for an overflow the host made, how many events it
	// dropped because the consumer was slower than the guest.
	Dropped int `json:"dropped,omitempty"`
}

// Bounds on a watch stream.
const (
	// MaxWatchLine bounds one event line: a path is at most PATH_MAX, so
	// an honest line (two paths, JSON-escaped) stays far below it.
	MaxWatchLine = 32 << 10
	// WatchQueue is how many events wait for a slow consumer before
	// further ones are dropped and counted in an overflow event.
	WatchQueue = 1024
)

// WatchOptions adjusts Watch.
type WatchOptions struct {
	Recursive bool
	// Ready, if set, is called once the guest watches everything asked
	// for: a change made after it is seen.
	Ready func()
}

// Watch streams the changes in the guest directory dir (recursive: and
// its subdirectories, new ones included) to fn, one call at a time, until
// ctx is done (the error is then ctx's) or the directory goes (nil, after
// a remove event of "."). fn runs on a goroutine of its own: while it is
// busy up to WatchQueue events wait, and beyond that they are dropped and
// reported as one overflow event with Dropped set, so a guest that
// changes files faster than fn takes them costs the host bounded memory.
// A stream line over MaxWatchLine or an event no honest agent sends ends
// the watch with ErrUnsafe.
func (c *Client) Watch(ctx context.Context, dir string, opts WatchOptions, fn func(WatchEvent)) error {
	req, err := json.Marshal(struct {
		Path      string `json:"path"`
		Recursive bool   `json:"recursive,omitempty"`
	}{dir, opts.Recursive})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := NewWatchParser(WatchQueue, cancel)
	p.ready = opts.Ready
	var wg sync.WaitGroup
	wg.Go(func() {
		for ev := range p.Events() {
			if ctx.Err() == nil {
				fn(ev)
			}
		}
	})
	// stdin stays open: the agent ends the watch when it closes.
	stdin := io.MultiReader(bytes.NewReader(append(req, '\n')), blockReader{wctx})
	_, err = c.run(wctx, runSpec{request: "subsystem", arg: "smolvm-watch", stdin: stdin, stdout: p})
	p.Close()
	wg.Wait()
	if perr := p.Err(); perr != nil {
		if pe := (*pathErr)(nil); errors.As(perr, &pe) {
			return &fs.PathError{Op: "watch", Path: dir, Err: pe.errno}
		}
		return fmt.Errorf("guest: watch %s: %w", dir, perr)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("guest: watch %s: %w", dir, err)
	}
	return nil
}

// blockReader is an stdin that never ends before ctx.
type blockReader struct{ ctx context.Context }

func (b blockReader) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, io.EOF
}

// WatchParser turns the agent's NDJSON stream, written to it, into
// checked events on a bounded queue. Write never blocks on the consumer.
type WatchParser struct {
	line    []byte
	q       chan WatchEvent
	dropped int
	fail    func()
	ready   func() // called at the agent's ready line
	isReady bool

	mu     sync.Mutex
	err    error
	closed bool
}

// NewWatchParser returns a parser whose queue holds n events; fail is
// called once the stream is found bad (or the agent reports an error).
func NewWatchParser(n int, fail func()) *WatchParser {
	return &WatchParser{q: make(chan WatchEvent, n), fail: fail}
}

// Events is the queue; it is closed by Close.
func (p *WatchParser) Events() <-chan WatchEvent { return p.q }

// Err is why the stream was refused or ended in error, if it was.
func (p *WatchParser) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Close closes the queue; later writes fail.
func (p *WatchParser) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.q)
	}
}

func (p *WatchParser) setErr(err error) error {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	if p.fail != nil {
		p.fail()
	}
	return err
}

// Write takes stream bytes; it must not be called concurrently.
func (p *WatchParser) Write(b []byte) (int, error) {
	if err := p.Err(); err != nil {
		return 0, err
	}
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(p.line)+len(b) > MaxWatchLine {
				return 0, p.setErr(fmt.Errorf("%w: an event line longer than %d bytes", ErrUnsafe, MaxWatchLine))
			}
			p.line = append(p.line, b...)
			break
		}
		if len(p.line)+i > MaxWatchLine {
			return 0, p.setErr(fmt.Errorf("%w: an event line longer than %d bytes", ErrUnsafe, MaxWatchLine))
		}
		p.line = append(p.line, b[:i]...)
		b = b[i+1:]
		if err := p.event(p.line); err != nil {
			return 0, p.setErr(err)
		}
		p.line = p.line[:0]
	}
	return n, nil
}

func (p *WatchParser) event(line []byte) error {
	var ev WatchEvent
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return fmt.Errorf("%w: an unreadable event line: %w", ErrUnsafe, err)
	}
	if ev.Dropped != 0 {
		return fmt.Errorf("%w: an event with a dropped count only the host sets", ErrUnsafe)
	}
	switch ev.Op {
	case "ready":
		if p.isReady || ev.Path != "" || ev.Old != "" {
			return fmt.Errorf("%w: a second or malformed ready line", ErrUnsafe)
		}
		p.isReady = true
		if p.ready != nil {
			p.ready()
		}
		return nil
	case "create", "modify", "remove":
		if !cleanRel(ev.Path) || ev.Old != "" {
			return fmt.Errorf("%w: %s event with path %.100q", ErrUnsafe, ev.Op, ev.Path)
		}
	case "rename":
		if !cleanRel(ev.Path) || !cleanRel(ev.Old) {
			return fmt.Errorf("%w: rename event from %.100q to %.100q", ErrUnsafe, ev.Old, ev.Path)
		}
	case "overflow":
		if ev.Path != "" || ev.Old != "" {
			return fmt.Errorf("%w: overflow event with a path", ErrUnsafe)
		}
	case "error":
		// The agent could not watch: the stream ends.
		if e, ok := Errno(ev.Errno); ok {
			return &pathErr{e}
		}
		msg := ev.Message
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		return fmt.Errorf("the guest says: %q", msg)
	default:
		return fmt.Errorf("%w: event op %.20q", ErrUnsafe, ev.Op)
	}
	if len(ev.Message) > 1024 {
		ev.Message = ev.Message[:1024]
	}
	p.push(ev)
	return nil
}

// pathErr is an errno the agent reported for the watched directory.
type pathErr struct{ errno error }

func (e *pathErr) Error() string { return e.errno.Error() }
func (e *pathErr) Unwrap() error { return e.errno }

// push queues ev, or counts it as dropped if the queue is full; an
// overflow event reporting the count goes first once there is room.
func (p *WatchParser) push(ev WatchEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.dropped > 0 {
		select {
		case p.q <- WatchEvent{Op: "overflow", Dropped: p.dropped, Message: fmt.Sprintf("the consumer was slow: %d events dropped", p.dropped)}:
			p.dropped = 0
		default:
			p.dropped++
			return
		}
	}
	select {
	case p.q <- ev:
	default:
		p.dropped++
	}
}

var _ io.Writer = (*WatchParser)(nil)
