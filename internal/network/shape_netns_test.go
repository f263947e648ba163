package network

import (
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNS runs fn on a thread in ns: ShapeTAP works in the calling thread's
// network namespace, so the test's rules never touch the host's.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread dies with the goroutine, still locked
		done <- err
	}()
	return <-done
}

// TestShapeTAP shapes a device of a namespace of the test's own and
// checks the kernel state: a tbf towards the guest at the rate, one
// nftables limit rule from it, replaced on a new rate, gone at 0 (and the
// table with it).
func TestShapeTAP(t *testing.T) {
	requireRoot(t)
	ns, _ := newNamespace(t, "shape")
	h := nlHandle(t, ns)
	const dev = "smolshp0"
	// A veth end stands in for the TAP: shaping looks only at its name
	// and its host-side queues.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev}, PeerName: dev + "p"}); err != nil {
		t.Fatal(err)
	}
	link := must(h.LinkByName(dev))
	tbfRate := func() uint64 {
		for _, q := range must(h.QdiscList(link)) {
			if tbf, ok := q.(*netlink.Tbf); ok {
				return tbf.Rate
			}
		}
		return 0
	}
	shaped := func() []string {
		var out []string
		inNS(t, ns, func() error { out = ShapedTAPs(); return nil })
		return out
	}
	for _, rate := range []int64{1 << 20, 5 << 20} {
		if err := inNS(t, ns, func() error { return ShapeTAP(dev, rate) }); err != nil {
			t.Fatal(err)
		}
		if got := tbfRate(); got != uint64(rate) {
			t.Errorf("tbf rate = %d, want %d", got, rate)
		}
		if got := shaped(); !slices.Equal(got, []string{dev}) {
			t.Errorf("from-guest rules = %v, want one for %s", got, dev)
		}
	}
	if err := inNS(t, ns, func() error { return ShapeTAP(dev, 0) }); err != nil {
		t.Fatal(err)
	}
	if got := tbfRate(); got != 0 {
		t.Errorf("tbf left at %d after 0", got)
	}
	if got := shaped(); len(got) != 0 {
		t.Errorf("from-guest rules left after 0: %v", got)
	}
	// Unshaping a device that is gone only removes its rule.
	if err := inNS(t, ns, func() error { return ShapeTAP(dev, 1<<20) }); err != nil {
		t.Fatal(err)
	}
	h.LinkDel(link)
	if err := inNS(t, ns, func() error { return UnshapeTAP(dev) }); err != nil {
		t.Fatal(err)
	}
	if got := shaped(); len(got) != 0 {
		t.Errorf("rule of a removed device left: %v", got)
	}
	if err := inNS(t, ns, func() error { return ShapeTAP(dev, MaxShapeBPS+1) }); err == nil {
		t.Error("a rate above 32 bits was taken")
	}
}
