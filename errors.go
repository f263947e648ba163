package smolvm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// The kinds of failure callers branch on, matched with errors.Is. Every
// error smolvm returns wraps one of these or a *TimeoutError, and names the
// VM and the operation.
var (
	// ErrInvalid: bad input (a malformed id, a size out of range, a
	// missing kernel file). Nothing was created.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: no VM with that id.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a VM with that id exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrNotRunning: the operation needs a running VM.
	ErrNotRunning = errors.New("VM is not running")
	// ErrTimeout matches every *TimeoutError.
	ErrTimeout = errors.New("timed out")
)

// Error is the error type of every failed VM operation.
type Error struct {
	Op  string // "create", "start", "run", ...
	VM  string // VM id, if known
	Err error
}

func (e *Error) Error() string {
	if e.VM == "" {
		return e.Op + ": " + e.Err.Error()
	}
	return fmt.Sprintf("vm %q: %s: %s", e.VM, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// TimeoutError reports an operation that ran past its deadline. It matches
// ErrTimeout and context.DeadlineExceeded.
type TimeoutError struct {
	Op      string
	VM      string
	Timeout time.Duration // the limit, if one was set
	// Detail says what was still missing, such as the tail of the console
	// log when a boot timed out.
	Detail string
}

func (e *TimeoutError) Error() string {
	msg := fmt.Sprintf("vm %q: %s timed out", e.VM, e.Op)
	if e.Timeout > 0 {
		msg += " after " + e.Timeout.String()
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *TimeoutError) Is(target error) bool {
	return target == ErrTimeout || target == context.DeadlineExceeded
}

// ValidationError says which setting was wrong and how to fix it.
type ValidationError struct {
	Field  string
	Value  any
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid %s %v: %s", e.Field, e.Value, e.Reason)
}

func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func opError(op, vm string, err error) error {
	if err == nil {
		return nil
	}
	var te *TimeoutError
	if errors.As(err, &te) {
		return err
	}
	var oe *Error
	if errors.As(err, &oe) {
		return err
	}
	// The guest channel's own failures, into the kinds callers branch on.
	switch {
	case errors.Is(err, guest.ErrUnresponsive):
		return &TimeoutError{Op: op, VM: vm, Detail: err.Error()}
	case errors.Is(err, guest.ErrGone):
		err = fmt.Errorf("%w: %w", ErrNotRunning, err)
	}
	return &Error{Op: op, VM: vm, Err: err}
}
