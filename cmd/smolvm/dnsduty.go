package main

import (
	"context"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/smolvm/smolvm/internal/egress"
	"github.com/smolvm/smolvm/internal/keeper"
	"github.com/smolvm/smolvm/internal/network"
)

// dnsDuty runs a TAP VM's DNS resolver (internal/egress) for as long as
// the VM runs: on its gateway, port 53, bound to its TAP. The policy is
// the spec file the SDK writes at each start and policy change
// (egress.SpecFile), which the resolver looks at before every query, so
// the duty needs no notification. A user-mode VM has no spec: the duty
// waits and does nothing.
func dnsDuty(ctx context.Context, kv keeper.VM) error {
	fw := network.NewFirewall(0)
	allow := func(tag string) egress.AllowFunc {
		return func(_ context.Context, addrs []netip.Addr, ttl time.Duration) error {
			return fw.AllowResolved(tag, addrs, ttl)
		}
	}
	return egress.ServeFile(ctx, filepath.Join(kv.Dir, egress.SpecFile), allow, kv.Log)
}
