package guest_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
)

// TestDialVia: a connection bound to a device that exists works; one bound
// to a device that is gone fails at once, before anything is sent, instead
// of being routed out another interface.
func TestDialVia(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: SO_BINDTODEVICE")
	}
	g := startGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey, guest.Via("lo"))
	if err != nil {
		t.Fatalf("dial via lo: %v", err)
	}
	c.Close()

	start := time.Now()
	_, err = guest.Dial(ctx, g.addr, g.hostKey.PublicKey(), g.clientKey, guest.Via("smolgone0"))
	if !errors.Is(err, guest.ErrNoInterface) {
		t.Fatalf("dial via a missing device: %v, want ErrNoInterface", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v: a missing device must not be retried", d)
	}
	t.Log(err)
}
