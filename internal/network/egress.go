package network

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/egress"
)

// Egress policy in the firewall. A VM with Egress reaches, in order:
//
//  1. nothing in Policy.Deny (deny wins);
//  2. anything in Policy.Allow;
//  3. with a restricted policy, the addresses its resolver handed out for
//     allowed names (the VM's set "dns-<id>", elements with timeouts), then
//     nothing else;
//  4. without one, anything but the egress.Perimeter (private, shared,
//     link-local, loopback, multicast and reserved ranges).
//
// The accept rules sit after the shared "established,related" accept, so
// a connection the policy allowed keeps flowing after a change that now
// denies its address: a policy change governs new connections.

// EgressPolicy is what a VM with Egress may reach (see above). The zero
// value is the default perimeter.
type EgressPolicy struct {
	Allow, Deny []netip.Prefix
	// Restricted drops whatever Allow and the resolved set do not accept.
	Restricted bool
	// Local are the host's own networks (HostNetworks): without
	// Restricted they are dropped like the perimeter, so a VM reaches the
	// host's LAN only when Allow names it.
	Local []netip.Prefix
}

// MaxResolved bounds the resolved set of one VM.
const MaxResolved = 4096

const (
	udpDportOffset = 2
	resolvedPrefix = "dns-"
)

func resolvedSet(l *layout, id string) *nftables.Set {
	return &nftables.Set{
		Table: l.table, Name: resolvedPrefix + id, KeyType: nftables.TypeIPAddr,
		HasTimeout: true, Size: MaxResolved, Comment: vmComment(id),
	}
}

// egressRules are the vm-forward rules of a VM with egress; the final
// accept/drop comes last.
func (l *layout) egressRules(r VMRules) []*nftables.Rule {
	c := vmComment(r.ID)
	in := iifname(r.TAP)
	drop, accept := verdict(expr.VerdictDrop), verdict(expr.VerdictAccept)
	var rules []*nftables.Rule
	for _, p := range r.Policy.Deny {
		rules = append(rules, l.rule(chainVMForward, c, in, ipv4(), ip4Prefix(ipv4DaddrOffset, p, expr.CmpOpEq), drop))
	}
	for _, p := range r.Policy.Allow {
		rules = append(rules, l.rule(chainVMForward, c, in, ipv4(), ip4Prefix(ipv4DaddrOffset, p, expr.CmpOpEq), accept))
	}
	if r.Policy.Restricted {
		return append(rules,
			l.rule(chainVMForward, c, in, ipv4(), lookupDaddr(resolvedPrefix+r.ID), accept),
			l.rule(chainVMForward, c, in, drop))
	}
	for _, p := range append(slices.Clone(egress.Perimeter), r.Policy.Local...) {
		rules = append(rules, l.rule(chainVMForward, c, in, ipv4(), ip4Prefix(ipv4DaddrOffset, p, expr.CmpOpEq), drop))
	}
	return append(rules,
		l.rule(chainVMForward, c, in, ipv4(), ip4Addr(ipv4SaddrOffset, r.GuestIP, expr.CmpOpEq), accept),
		l.rule(chainVMForward, c, in, drop))
}

// dnsRules let the guest ask the resolver on its gateway, UDP and TCP
// port 53, and nothing else of the host.
func (l *layout) dnsRules(r VMRules) []*nftables.Rule {
	if !r.DNS.IsValid() {
		return nil
	}
	c := vmComment(r.ID)
	in, to := iifname(r.TAP), ip4Addr(ipv4DaddrOffset, r.DNS, expr.CmpOpEq)
	accept := verdict(expr.VerdictAccept)
	return []*nftables.Rule{
		l.rule(chainVMInput, c, in, ipv4(), to, l4Dport(unix.IPPROTO_UDP, 53), accept),
		l.rule(chainVMInput, c, in, ipv4(), to, l4Dport(unix.IPPROTO_TCP, 53), accept),
	}
}

func lookupDaddr(set string) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4DaddrOffset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

func l4Dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: udpDportOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(port >> 8), byte(port)}},
	}
}

// ensureResolvedSet creates the VM's resolved set, or empties it: the
// rules are about to change, and addresses handed out under the old ones
// must not outlive them (the resolver hands them out again on the next
// query for a name still allowed).
func (f *Firewall) ensureResolvedSet(l *layout, id string) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	set := resolvedSet(l, id)
	if _, err := c.GetSetByName(l.table, set.Name); err == nil {
		c.FlushSet(set)
	} else {
		c.AddTable(l.table)
		if err := c.AddSet(set, nil); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("create set %s%s: %w", resolvedPrefix, id, err)
	}
	return nil
}

// AllowResolved lets VM id connect to addrs for ttl (its resolver handed
// them out), renewing the timeout of those already allowed. A VM whose
// rules are gone is fs.ErrNotExist-like ENOENT, wrapped.
func (f *Firewall) AllowResolved(id string, addrs []netip.Addr, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	l := newLayout()
	c, err := f.conn()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	set := resolvedSet(l, id)
	var elems []nftables.SetElement
	for _, a := range addrs {
		if !a.Unmap().Is4() {
			continue
		}
		b := a.Unmap().As4()
		elems = append(elems, nftables.SetElement{Key: b[:], Timeout: ttl})
	}
	// Add (a no-op for one already there), delete, add: one transaction
	// that gives every element the new timeout on any kernel.
	for _, op := range []func(*nftables.Set, []nftables.SetElement) error{c.SetAddElements, c.SetDeleteElements, c.SetAddElements} {
		if err := op(set, elems); err != nil {
			return fmt.Errorf("firewall: vm %q: %w", id, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: vm %q: allow resolved addresses: %w", id, err)
	}
	return nil
}

// FlushResolved forgets every address the VM's resolver handed out; a
// missing set is not an error.
func (f *Firewall) FlushResolved(id string) error {
	c, err := f.conn()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	c.FlushSet(resolvedSet(newLayout(), id))
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("firewall: vm %q: flush resolved addresses: %w", id, err)
	}
	return nil
}

// Resolved lists the addresses the VM may reach by resolution now.
func (f *Firewall) Resolved(id string) ([]netip.Addr, error) {
	c, err := f.conn()
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	l := newLayout()
	set, err := c.GetSetByName(l.table, resolvedPrefix+id)
	if err != nil {
		return nil, nil
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("firewall: vm %q: %w", id, err)
	}
	var out []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// deleteResolvedSet removes the VM's set (after its rules are gone).
func (f *Firewall) deleteResolvedSet(id string) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	l := newLayout()
	if _, err := c.GetSetByName(l.table, resolvedPrefix+id); err != nil {
		return nil // no table or no set
	}
	c.DelSet(resolvedSet(l, id))
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete set %s%s: %w", resolvedPrefix, id, err)
	}
	return nil
}

// ResolvedSets lists the VM tags that have a resolved set (doctor: one
// whose VM has no rules left is a leftover). A missing table has none.
func (f *Firewall) ResolvedSets() ([]string, error) {
	c, err := f.conn()
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	sets, err := c.GetSets(newLayout().table)
	if err != nil {
		return nil, nil // no table
	}
	var out []string
	for _, s := range sets {
		if tag, ok := strings.CutPrefix(s.Name, resolvedPrefix); ok {
			out = append(out, tag)
		}
	}
	return out, nil
}

// DNSReachable reports whether the shared input rules lead to the per-VM
// DNS rules. A smolvm build from before egress policies rewrites the
// shared rules without that jump when it starts a VM (the table is
// host-wide); EnsureBase puts it back. A missing table is false.
func (f *Firewall) DNSReachable() (bool, error) {
	c, err := f.conn()
	if err != nil {
		return false, fmt.Errorf("firewall: %w", err)
	}
	l := newLayout()
	rules, err := c.GetRules(l.table, l.chains[chainInput])
	if err != nil {
		return false, nil // no table or chain
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump && v.Chain == chainVMInput {
				return true, nil
			}
		}
	}
	return false, nil
}

// HostNetworks lists the IPv4 networks the host is directly on: the
// destinations of its link-scope routes without a gateway, on interfaces
// other than loopback and smolvm's TAPs. These are its LANs, which the
// default perimeter keeps VMs out of even when they are numbered from
// public addresses. Those already in the perimeter are left out. It is
// read at each start and policy change: a network the host joins later is
// not in a running VM's rules until then.
func HostNetworks() []netip.Prefix {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	names := map[int]string{}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.Gw != nil || r.Scope != netlink.SCOPE_LINK {
			continue
		}
		name, ok := names[r.LinkIndex]
		if !ok {
			if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				name = link.Attrs().Name
			}
			names[r.LinkIndex] = name
		}
		if name == "" || name == "lo" || strings.HasPrefix(name, tapPrefix) {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(a.Unmap(), ones).Masked()
		if !p.Addr().Is4() || slices.ContainsFunc(egress.Perimeter, func(q netip.Prefix) bool { return q.Bits() <= p.Bits() && q.Contains(p.Addr()) }) || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// HostOrVM reports whether a connection from the host to a leads to the
// host itself or to a VM: the kernel routes it through loopback (one of
// the host's own addresses) or one of smolvm's TAPs. Host-side code that
// connects for a guest (the user-mode egress proxy) must refuse those,
// whatever the guest's policy allows: the TAP firewall's input and
// VM-to-VM rules stop the same traffic from TAP guests. An address the
// kernel cannot route counts as forbidden.
func HostOrVM(a netip.Addr) bool {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil || len(routes) == 0 {
		return true
	}
	for _, r := range routes {
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return true
		}
		name := link.Attrs().Name
		if name == "lo" || strings.HasPrefix(name, tapPrefix) || r.Type == unix.RTN_LOCAL {
			return true
		}
	}
	return false
}
