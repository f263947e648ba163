package network

import (
	"errors"
	"fmt"
	"math"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MaxShapeBPS is the highest rate ShapeTAP takes: the kernel's policer
// counts bytes per second in 32 bits.
const MaxShapeBPS = math.MaxUint32

// shapeBurst is how many bytes may pass at once above the rate: enough
// for a few full-sized frames (a TAP with offloads carries up to 64 KiB
// segments), small enough that a second's average stays near the rate.
func shapeBurst(bps int64) uint32 {
	return uint32(max(bps/10, 128<<10))
}

// ShapeTAP limits the TAP device name to bps bytes per second each way:
// towards the guest by a token bucket (tbf) on its egress, from the guest
// by an nftables limit in a table of its own that drops what exceeds the
// rate (TCP then slows down to it). A tc policer on the ingress would do
// the same, but kernels without act_police (like this project's CI's)
// have none. bps 0 removes both. The guest cannot change either: they
// live on the host's side of the device.
func ShapeTAP(name string, bps int64) error {
	if bps < 0 || bps > MaxShapeBPS {
		return fmt.Errorf("shape %s: rate %d out of range 0-%d", name, bps, int64(MaxShapeBPS))
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("shape %s: %w", name, err)
	}
	idx := link.Attrs().Index
	root := netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}
	// Start from nothing: a rerun (or a new rate) replaces what is there.
	if err := netlink.QdiscDel(&netlink.Tbf{QdiscAttrs: root}); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("shape %s: remove tbf: %w", name, err)
	}
	if err := limitFromGuest(name, bps); err != nil {
		return fmt.Errorf("shape %s: from the guest: %w", name, err)
	}
	if bps == 0 {
		return nil
	}
	burst := shapeBurst(bps)
	tbf := &netlink.Tbf{
		QdiscAttrs: root,
		Rate:       uint64(bps),
		Buffer:     netlink.Xmittime(uint64(bps), burst),
		// Queue up to ~0.5 s worth (at least the burst) before dropping.
		Limit: max(uint32(bps/2), burst),
	}
	if err := netlink.QdiscAdd(tbf); err != nil {
		return fmt.Errorf("shape %s: towards the guest: %w", name, err)
	}
	return nil
}

// LinkStats are a device's counters as the host sees them.
type LinkStats struct {
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxDropped, TxDropped uint64
}

// TAPStats reads the counters of device name. On a TAP, Rx is what the
// guest sent and Tx what it was sent.
func TAPStats(name string) (LinkStats, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return LinkStats{}, fmt.Errorf("stats %s: %w", name, err)
	}
	s := link.Attrs().Statistics
	if s == nil {
		return LinkStats{}, fmt.Errorf("stats %s: the kernel gave none", name)
	}
	return LinkStats{RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets, RxDropped: s.RxDropped, TxDropped: s.TxDropped}, nil
}
