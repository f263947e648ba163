package agent

import (
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNetns runs fn on a thread of its own in a new network namespace.
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

// TestAddressLink: renumbering replaces the address, whether the new one
// shares the old one's subnet (where deleting the old primary would take
// a new secondary with it) or not, and moves the default route.
func TestAddressLink(t *testing.T) {
	inNetns(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "d0"}, PeerName: "d1"}); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		if peer, err := netlink.LinkByName("d1"); err == nil {
			netlink.LinkSetUp(peer)
		}
		link, err := netlink.LinkByName("d0")
		if err != nil {
			t.Error(err)
			return
		}
		for _, step := range []struct{ addr, gw string }{
			{"10.0.0.2/24", "10.0.0.1"},
			{"10.0.0.2/24", "10.0.0.1"}, // the same again
			{"10.0.0.3/24", "10.0.0.1"}, // same subnet
			{"10.9.0.6/30", "10.9.0.5"}, // another one
		} {
			want := netip.MustParsePrefix(step.addr)
			if err := addressLink(link, want, netip.MustParseAddr(step.gw), nil); err != nil {
				t.Errorf("%s: %v", step.addr, err)
				return
			}
			addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
			var got []string
			for _, a := range addrs {
				got = append(got, a.IPNet.String())
			}
			if !slices.Equal(got, []string{want.String()}) {
				t.Errorf("after %s: addresses %v", step.addr, got)
			}
			routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
			var gws []string
			for _, r := range routes {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() {
					gws = append(gws, r.Gw.String())
				}
			}
			if !slices.Equal(gws, []string{step.gw}) {
				t.Errorf("after %s: default routes via %v, want %s", step.addr, gws, step.gw)
			}
		}
	})
}
