package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// Limits bound what a VM may take from the host. The zero value limits
// nothing. Each is enforced outside the guest, which cannot lift it: the
// CPU quota and memory ceiling by a cgroup of the VM's QEMU process
// (smolvm/<instance>, v2 or v1), the disk rates by QEMU's own block
// throttling, the network rate by traffic control on the VM's TAP device.
// All can be changed while the VM runs (VM.SetLimits) and hold across
// stop and start; VMs made from a snapshot start with the snapshot's.
type Limits struct {
	// CPU is a quota in host CPUs: 0.5 is half of one, 2 two of them.
	// It is at most the VM's vCPUs and at least MinCPULimit. Needs root
	// and a cgroup with the cpu controller.
	CPU float64 `json:"cpu,omitempty"`
	// MemoryMiB caps the memory of the VM's QEMU process: the guest's
	// RAM as the guest touches it plus QEMU's own (at least the VM's
	// MemoryMiB + MemoryLimitMarginMiB). A VM that reaches it is killed
	// by the kernel (its state becomes "error"); the host is untouched.
	// Needs root and a cgroup with the memory controller.
	MemoryMiB int `json:"memory_mib,omitempty"`
	// DiskBPS and DiskIOPS cap the root disk's bytes and operations per
	// second, reads and writes together; the guest's requests beyond
	// wait in QEMU.
	DiskBPS  int64 `json:"disk_bps,omitempty"`
	DiskIOPS int64 `json:"disk_iops,omitempty"`
	// NetBPS caps the VM's network traffic in bytes per second, each way.
	// TAP networking only (as root); user-mode networking has no shaper.
	NetBPS int64 `json:"net_bps,omitempty"`
}

// Bounds of Limits, checked by VMConfig.Validate and SetLimits.
const (
	MinCPULimit = 0.01 // a 1 ms quota in each 100 ms period, the kernel's least
	// MemoryLimitMarginMiB is what a memory ceiling must leave above the
	// guest's RAM for QEMU itself (its code, device buffers, the TCG
	// translation cache): a ceiling below is a VM the kernel would kill.
	MemoryLimitMarginMiB = 128
	MinDiskBPS           = 64 << 10 // lower would stall the guest's boot for minutes
	MinDiskIOPS          = 10
	MinNetBPS            = 16 << 10 // lower cannot pass a full-sized frame with its burst
	MaxNetBPS            = network.MaxShapeBPS
)

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// cgroupLimits reports whether l needs a cgroup.
func (l Limits) cgroupLimits() bool { return l.CPU != 0 || l.MemoryMiB != 0 }

// validate checks l for a VM of config c (after defaults).
func (l Limits) validate(c VMConfig) []error {
	var errs []error
	bad := func(field string, v any, reason string) {
		errs = append(errs, &ValidationError{Field: field, Value: v, Reason: reason})
	}
	switch {
	case l.CPU < 0 || math.IsNaN(l.CPU) || math.IsInf(l.CPU, 0):
		bad("cpu limit", l.CPU, "must be a positive number of host CPUs (0.5 is half of one); 0 means no limit")
	case l.CPU > 0 && l.CPU < MinCPULimit:
		bad("cpu limit", l.CPU, fmt.Sprintf("must be at least %g (the kernel's smallest quota)", MinCPULimit))
	case l.CPU > float64(c.VCPUs):
		bad("cpu limit", l.CPU, fmt.Sprintf("the VM has %d vCPUs and can use no more than that: use at most %d, or give it more vCPUs", c.VCPUs, c.VCPUs))
	}
	switch {
	case l.MemoryMiB < 0:
		bad("memory limit", fmt.Sprintf("%d MiB", l.MemoryMiB), "must not be negative; 0 means no limit")
	case l.MemoryMiB > 0 && l.MemoryMiB < c.MemoryMiB+MemoryLimitMarginMiB:
		bad("memory limit", fmt.Sprintf("%d MiB", l.MemoryMiB), fmt.Sprintf(
			"must leave QEMU %d MiB above the guest's %d MiB of RAM, or the kernel kills the VM once the guest uses its memory: use at least %d, or give the guest less memory",
			MemoryLimitMarginMiB, c.MemoryMiB, c.MemoryMiB+MemoryLimitMarginMiB))
	}
	switch {
	case l.DiskBPS < 0:
		bad("disk bps", l.DiskBPS, "must not be negative; 0 means no limit")
	case l.DiskBPS > 0 && l.DiskBPS < MinDiskBPS:
		bad("disk bps", l.DiskBPS, fmt.Sprintf("must be at least %d (64Ki) bytes per second", MinDiskBPS))
	}
	switch {
	case l.DiskIOPS < 0:
		bad("disk iops", l.DiskIOPS, "must not be negative; 0 means no limit")
	case l.DiskIOPS > 0 && l.DiskIOPS < MinDiskIOPS:
		bad("disk iops", l.DiskIOPS, fmt.Sprintf("must be at least %d operations per second", MinDiskIOPS))
	}
	switch {
	case l.NetBPS < 0:
		bad("net bps", l.NetBPS, "must not be negative; 0 means no limit")
	case l.NetBPS > 0 && l.NetBPS < MinNetBPS:
		bad("net bps", l.NetBPS, fmt.Sprintf("must be at least %d (16Ki) bytes per second", MinNetBPS))
	case l.NetBPS > MaxNetBPS:
		bad("net bps", l.NetBPS, fmt.Sprintf("must be at most %d bytes per second (the kernel counts in 32 bits); 0 means no limit", int64(MaxNetBPS)))
	}
	return errs
}

// checkHost says why this host cannot enforce l for a VM in network mode
// (NetworkTAP or NetworkUser); nil when it can.
func (l Limits) checkHost(mode string) error {
	var errs []error
	if l.cgroupLimits() {
		if os.Geteuid() != 0 {
			errs = append(errs, &ValidationError{Field: "cpu/memory limit", Value: fmt.Sprintf("%g CPUs/%d MiB", l.CPU, l.MemoryMiB),
				Reason: "needs root: smolvm confines the VM's QEMU in a cgroup of its own, which only root may make; run as root, or leave the CPU and memory limits unset"})
		} else if _, err := cgroup.Detect(); err != nil {
			errs = append(errs, &ValidationError{Field: "cpu/memory limit", Value: fmt.Sprintf("%g CPUs/%d MiB", l.CPU, l.MemoryMiB),
				Reason: "this host has no cgroup to enforce it in (" + err.Error() + "); mount a cgroup v2 hierarchy with the cpu and memory controllers, or leave the limits unset"})
		}
	}
	if l.NetBPS != 0 && mode != NetworkTAP {
		errs = append(errs, &ValidationError{Field: "net bps", Value: l.NetBPS,
			Reason: "needs TAP networking (as root): QEMU's user-mode network has no rate limit; run as root, or leave it unset"})
	}
	return errors.Join(errs...)
}

// ParseRate parses a rate in bytes per second: an integer, optionally
// followed by k, M, G or T (powers of 1000) or Ki, Mi, Gi or Ti (powers of
// 1024), with or without a trailing "B" or "/s": "1M" is 1000000, "1Mi"
// 1048576, "512KiB/s" 524288. "0" means no limit.
func ParseRate(s string) (int64, error) {
	bad := func(reason string) (int64, error) {
		return 0, &ValidationError{Field: "rate", Value: fmt.Sprintf("%q", s), Reason: reason}
	}
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	t = strings.TrimSuffix(t, "B")
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return bad("want bytes per second: a whole number with an optional suffix k, M, G, T (x1000) or Ki, Mi, Gi, Ti (x1024), such as 10M or 512Ki")
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return bad("too large")
	}
	mult := map[string]int64{"": 1,
		"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
		"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
	}
	m, ok := mult[t[i:]]
	if !ok {
		return bad(fmt.Sprintf("unknown suffix %q: use k, M, G, T (x1000) or Ki, Mi, Gi, Ti (x1024); the unit is bytes per second", t[i:]))
	}
	if n > math.MaxInt64/m {
		return bad("too large")
	}
	return n * m, nil
}

// SetLimits replaces the VM's limits (all of them: a zero field lifts
// that limit). A running VM is throttled anew at once; the limits are
// stored and hold at every later start. Bad limits match ErrInvalid and
// change nothing.
func (v *VM) SetLimits(ctx context.Context, l Limits) error {
	unlock, err := v.lock(ctx)
	if err != nil {
		return opError("set limits", v.id, err)
	}
	defer unlock()
	return opError("set limits", v.id, v.setLimits(ctx, l))
}

func (v *VM) setLimits(ctx context.Context, l Limits) error {
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	info := v.Info()
	if err := errors.Join(l.validate(info.Config.withDefaults())...); err != nil {
		return err
	}
	if err := l.checkHost(info.Network.Mode); err != nil {
		return err
	}
	if info.State == StateRunning || info.State == StatePaused {
		if err := v.applyLimits(ctx, l, v.process()); err != nil {
			return err
		}
	}
	return v.update(ctx, func(row *store.VM, _ *runtimeRecord) error {
		var cfg VMConfig
		if err := json.Unmarshal(row.Config, &cfg); err != nil {
			return fmt.Errorf("stored config: %w", err)
		}
		cfg.Limits = l
		b, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		row.Config = b
		return nil
	})
}

// applyLimits sets l on the running VM of process p.
func (v *VM) applyLimits(ctx context.Context, l Limits, p hypervisor.Process) error {
	rt := v.runtime()
	if l.cgroupLimits() || rt.Cgroup != nil {
		g, err := v.ensureCgroup(ctx, l)
		if err != nil {
			return err
		}
		// A VM started without a group joins it now; one in it already
		// is moved onto itself, which changes nothing.
		if err := v.addToCgroup(g, p); err != nil {
			return err
		}
	}
	if err := v.throttleDisk(ctx, l); err != nil {
		return err
	}
	if tap := v.Info().Network.TAP; tap != "" {
		return network.ShapeTAP(tap, l.NetBPS)
	} else if l.NetBPS != 0 {
		return l.checkHost(NetworkUser)
	}
	return nil
}

// ensureCgroup makes (or adopts) the VM's cgroup with l set and records
// it, so that stop and delete remove it even from another process (a v1
// group lies under the cgroup of the process that made it).
func (v *VM) ensureCgroup(ctx context.Context, l Limits) (cgroup.Group, error) {
	if rt := v.runtime(); rt.Cgroup != nil && rt.Cgroup.Exists() {
		return *rt.Cgroup, rt.Cgroup.Set(cgLimits(l))
	}
	host, err := cgroup.Detect()
	if err != nil {
		return cgroup.Group{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	g, err := host.Create(v.runtime().Instance, cgLimits(l))
	if err != nil {
		return cgroup.Group{}, err
	}
	if err := v.update(ctx, func(_ *store.VM, r *runtimeRecord) error { r.Cgroup = &g; return nil }); err != nil {
		g.Remove()
		return cgroup.Group{}, err
	}
	return g, nil
}

func cgLimits(l Limits) cgroup.Limits {
	return cgroup.Limits{CPU: l.CPU, MemoryBytes: int64(l.MemoryMiB) << 20}
}

// throttleDisk sets QEMU's block throttling to l's disk rates.
func (v *VM) throttleDisk(ctx context.Context, l Limits) error {
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	return q.SetThrottle(qemu.Throttle{BPS: l.DiskBPS, IOPS: l.DiskIOPS})
}

// limitsBeforeStart prepares the limits of a VM about to start: its
// cgroup, which spec makes QEMU run in before the guest does, and the
// network shaping of its TAP (made already). The returned func closes
// what spec holds once QEMU has started.
func (v *VM) limitsBeforeStart(ctx context.Context, l Limits, spec *hypervisor.Spec, undo *undoStack) (func(), error) {
	done := func() {}
	if tap := spec.Net.TAP; tap != "" && l.NetBPS != 0 {
		if err := network.ShapeTAP(tap, l.NetBPS); err != nil {
			return done, err
		}
		undo.push("net limit", func() error { return network.ShapeTAP(tap, 0) })
	} else if l.NetBPS != 0 {
		return done, l.checkHost(NetworkUser)
	}
	if !l.cgroupLimits() {
		return done, nil
	}
	g, err := v.ensureCgroup(ctx, l)
	if err != nil {
		return done, err
	}
	// Undone before the QEMU it holds is killed (undo runs backwards), so
	// it kills that first: a group with a member cannot go.
	undo.push("cgroup", func() error {
		if err := hypervisor.KillByName(context.Background(), hypervisor.Process{}, spec.Name); err != nil {
			return err
		}
		return v.removeCgroup(context.Background())
	})
	if g.V2 {
		f, err := os.Open(g.Dirs[0])
		if err != nil {
			return done, fmt.Errorf("cgroup: %w", err)
		}
		spec.CgroupDir = f
		return func() { f.Close() }, nil
	}
	spec.CgroupProcs = g.ProcsFiles()
	return done, nil
}

// limitsAfterStart applies what only a running QEMU can take: the disk
// throttle, over QMP. The guest has run for no more than the few
// milliseconds since QMP first answered: its kernel is still booting
// from the initramfs, or a resumed guest has just been continued.
func (v *VM) limitsAfterStart(ctx context.Context, l Limits) error {
	if l.DiskBPS == 0 && l.DiskIOPS == 0 {
		return nil
	}
	return v.throttleDisk(ctx, l)
}

// removeCgroup removes the VM's cgroup, whose processes must be gone,
// and forgets it.
func (v *VM) removeCgroup(ctx context.Context) error {
	g := v.runtime().Cgroup
	if g == nil {
		return nil
	}
	if err := g.Remove(); err != nil {
		return err
	}
	return v.update(ctx, func(_ *store.VM, r *runtimeRecord) error { r.Cgroup = nil; return nil })
}

// releaseLimits undoes the limits of a VM whose process is gone: the
// from-guest rule of its TAP (tc goes with the device) and its cgroup.
func (v *VM) releaseLimits(tap string) {
	// Whatever the limits say now: another process may have changed them.
	if tap != "" {
		if err := network.UnshapeTAP(tap); err != nil {
			v.log().Warn("remove net limit", "err", err)
		}
	}
	if err := v.removeCgroup(context.Background()); err != nil && !errors.Is(err, ErrNotFound) {
		v.log().Warn("remove cgroup", "err", err)
	}
}
