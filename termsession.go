package smolvm

import (
	"context"
	"io"
	"sync"
)

// TerminalSession is a command running on a pseudo-terminal in the guest,
// read and written like a terminal: what a program driving an
// interactive tool needs (the CLI's shell and the API's exec WebSocket use
// ExecTerminal directly). Make one with StartTerminal.
type TerminalSession struct {
	in     *io.PipeWriter
	out    *io.PipeReader
	resize chan [2]int
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	err    error
	close  sync.Once
}

// StartTerminal runs cmd as ExecTerminal does (t's size, o's env, dir,
// user and timeout; o's streams are the session's) and returns at once.
// Read the terminal's output, Write its input, Resize it, then Wait for
// the exit code; Close ends it. ctx bounds the whole command.
func (v *VM) StartTerminal(ctx context.Context, cmd string, o ExecOptions, t Terminal) *TerminalSession {
	ctx, cancel := context.WithCancel(ctx)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &TerminalSession{in: inW, out: outR, resize: make(chan [2]int), cancel: cancel, done: make(chan struct{})}
	o.Stdin, o.Stdout, o.Stderr = inR, outW, nil
	t.Resize = s.resize
	go func() {
		defer close(s.done)
		s.code, s.err = v.ExecTerminal(ctx, cmd, o, t)
		if s.err != nil {
			outW.CloseWithError(s.err)
		} else {
			outW.Close()
		}
		inR.Close()
	}()
	return s
}

// Read reads the terminal's output; io.EOF once the command has exited
// and all of it was read.
func (s *TerminalSession) Read(p []byte) (int, error) { return s.out.Read(p) }

// Write types p into the terminal.
func (s *TerminalSession) Write(p []byte) (int, error) { return s.in.Write(p) }

// Resize sets the terminal's size in cells; the command gets SIGWINCH.
func (s *TerminalSession) Resize(ctx context.Context, width, height int) error {
	select {
	case s.resize <- [2]int{width, height}:
		return nil
	case <-s.done:
		return io.ErrClosedPipe
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait waits for the command to exit and returns its exit code (128 plus
// the signal's number if one ended it). Output not yet read is dropped.
func (s *TerminalSession) Wait() (int, error) {
	go func() { _, _ = io.Copy(io.Discard, s.out) }()
	<-s.done
	return s.code, s.err
}

// Close kills the command if it still runs and waits for it to end.
func (s *TerminalSession) Close() error {
	s.close.Do(func() {
		s.cancel()
		s.in.Close()
		s.out.Close()
	})
	<-s.done
	return nil
}
