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

// repairEvery is how often the DNS duty checks that the shared firewall
// rules still lead to the VM's DNS rules.
const repairEvery = 5 * time.Second

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
	spec := filepath.Join(kv.Dir, egress.SpecFile)
	go repairBase(ctx, kv, fw, spec)
	return egress.ServeFile(ctx, spec, allow, kv.Log)
}

// repairBase puts the shared rules back when a smolvm of an older build
// rewrote them without the jump to the per-VM DNS rules (the table is
// host-wide): without it the guest's queries never reach the resolver.
func repairBase(ctx context.Context, kv keeper.VM, fw *network.Firewall, spec string) {
	tick := time.NewTicker(repairEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := egress.ReadSpec(spec); err != nil {
			continue // a user-mode VM, or stopping: nothing to serve
		}
		if ok, err := fw.DNSReachable(); err != nil || ok {
			continue
		}
		if err := fw.EnsureBase(); err != nil {
			kv.Log.Warn("dns: restore the shared firewall rules", "err", err)
		} else {
			kv.Log.Info("dns: restored the shared firewall rules another smolvm rewrote")
		}
	}
}
