package flock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := Lock(context.Background(), path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Lock(ctx, path, 0o600); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while held: %v, want a deadline error", err)
	}
	unlock()
	unlock2, err := Lock(context.Background(), path, 0o600)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
	if _, err := Lock(context.Background(), filepath.Join(t.TempDir(), "gone", "x.lock"), 0o600); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing directory: %v, want os.ErrNotExist", err)
	}
}
