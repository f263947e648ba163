package network

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Errors of the firewall, matched with errors.Is.
var (
	// ErrInvalidRule: a VMRules or PortForward that cannot be expressed
	// (bad id, TAP name without the smol prefix, non-IPv4 address, port 0).
	ErrInvalidRule = errors.New("invalid firewall rule")
	// ErrForwardInUse: the host address and port are forwarded to another VM.
	ErrForwardInUse = errors.New("host port already forwarded")
)

// Firewall manages smolvm's nftables table, inet "smolvm", in one network
// namespace: VM-to-VM isolation, no access from VMs to the host's own
// services, NAT for VMs with egress, and DNAT port forwards. Every per-VM
// rule carries the comment "vm:<id>" (forwards also "fwd:<addr>:<port>")
// so RemoveVM and a doctor find them.
//
// Rules from other tables still apply: a host whose own firewall drops
// forwarded traffic also drops a VM's egress.
type Firewall struct {
	netns int // fd of the network namespace; 0 = the caller's
	// Record is the file that notes the forwarding the firewall turned on
	// (see EnsureBase), and next to which its lock lives. NewFirewall(0)
	// sets DefaultForwardingRecord; a Firewall of another namespace needs
	// one of its own before it changes anything.
	Record string
}

// NewFirewall returns the firewall of the network namespace open as fd
// netns (0 = the namespace of the calling process). The fd must stay open
// while the Firewall is used.
func NewFirewall(netns int) *Firewall {
	f := &Firewall{netns: netns}
	if netns == 0 {
		f.Record = DefaultForwardingRecord
	}
	return f
}

// VMRules describes one VM to the firewall.
type VMRules struct {
	ID      string
	TAP     string     // host device, smol-prefixed (TAPName)
	GuestIP netip.Addr // the guest end of the TAP, IPv4
	// Egress lets the VM open connections to anything outside the host
	// (masqueraded behind the host's address). Without it the VM can only
	// answer connections made to it.
	Egress bool
	// Policy limits Egress (see EgressPolicy); the zero value keeps the VM
	// out of private and other non-public ranges.
	Policy EgressPolicy
	// DNS, if valid, is the host address (the TAP's) whose port 53 the
	// guest may reach: its resolver.
	DNS netip.Addr
}

// Validate checks that the rules can be expressed.
func (r VMRules) Validate() error {
	if err := validID(r.ID); err != nil {
		return err
	}
	if len(r.TAP) <= len(tapPrefix) || len(r.TAP) >= unix.IFNAMSIZ || r.TAP[:len(tapPrefix)] != tapPrefix || !validIfname(r.TAP) {
		return fmt.Errorf("%w: vm %q: TAP name %q: want %q followed by up to %d name characters", ErrInvalidRule, r.ID, r.TAP, tapPrefix, unix.IFNAMSIZ-1-len(tapPrefix))
	}
	if !r.GuestIP.Is4() {
		return fmt.Errorf("%w: vm %q: guest address %v: want IPv4", ErrInvalidRule, r.ID, r.GuestIP)
	}
	if r.DNS.IsValid() && !r.DNS.Is4() {
		return fmt.Errorf("%w: vm %q: resolver address %v: want IPv4", ErrInvalidRule, r.ID, r.DNS)
	}
	for _, p := range append(slices.Clone(r.Policy.Allow), r.Policy.Deny...) {
		if !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("%w: vm %q: network %v: want an IPv4 prefix without host bits", ErrInvalidRule, r.ID, p)
		}
	}
	return nil
}

func validIfname(s string) bool {
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || r == '/' || r == '*' || r == ':' {
			return false
		}
	}
	return s != "." && s != ".."
}

// PortForward makes GuestIP:GuestPort reachable over TCP on the host.
type PortForward struct {
	VMID string
	// HostAddr is the host address to forward: a specific IPv4 address,
	// 0.0.0.0 for every local address (from other machines and from the
	// host itself, including 127.0.0.1), or a loopback address, reachable
	// from the host itself only. Zero means DefaultForwardAddr (127.0.0.1).
	HostAddr  netip.Addr
	HostPort  uint16
	GuestIP   netip.Addr
	GuestPort uint16
}

// normalize fills in the default host address and checks the forward.
func (p PortForward) normalize() (PortForward, error) {
	if err := validID(p.VMID); err != nil {
		return p, err
	}
	if !p.HostAddr.IsValid() {
		p.HostAddr = DefaultForwardAddr
	}
	p.HostAddr, p.GuestIP = p.HostAddr.Unmap(), p.GuestIP.Unmap()
	if !p.HostAddr.Is4() || !p.GuestIP.Is4() {
		return p, fmt.Errorf("%w: vm %q: forward %v -> %v: want IPv4 addresses", ErrInvalidRule, p.VMID, p.HostAddr, p.GuestIP)
	}
	if p.HostPort == 0 || p.GuestPort == 0 {
		return p, fmt.Errorf("%w: vm %q: forward %v:%d -> %d: ports must be 1-65535", ErrInvalidRule, p.VMID, p.HostAddr, p.HostPort, p.GuestPort)
	}
	return p, nil
}

// RuleKind says what a tagged rule is for.
type RuleKind string

// The kinds of tagged rules.
const (
	RuleVM      RuleKind = "vm"      // isolation and egress of a VM
	RuleForward RuleKind = "forward" // a port forward
)

// TaggedRule is one rule of the table that belongs to a VM.
type TaggedRule struct {
	VMID     string
	Kind     RuleKind
	HostAddr netip.Addr // forwards only
	HostPort uint16     // forwards only
	Chain    string
	Handle   uint64
}

func (f *Firewall) conn() (*nftables.Conn, error) {
	if f.netns == 0 {
		return nftables.New()
	}
	return nftables.New(nftables.WithNetNSFd(f.netns))
}

// EnsureBase creates the table, its chains and the shared rules, or brings
// an existing table's shared rules up to date in one transaction without
// touching per-VM rules, then turns on IPv4 forwarding where VMs need it:
// net.ipv4.conf.<dev>.forwarding of each egress interface (those of the
// default routes) that has it off. Each such change is noted in Record
// first, and the table drops whatever those interfaces would forward to
// anything but a smol* TAP, so the host forwards nothing new except VM
// traffic; DeleteTable puts the settings back. Rules come first, so
// forwarding is never on without VM isolation.
func (f *Firewall) EnsureBase() error {
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return f.ensureBase()
}

func (f *Firewall) ensureBase() error {
	rec, err := ReadForwardingRecord(f.Record)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	rec, devs, err := f.planForwarding(rec)
	if err != nil {
		return fmt.Errorf("firewall: enable forwarding: %w", err)
	}
	if err := writeForwardingRecord(f.Record, rec); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	c, err := f.conn()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	l := newLayout()
	c.AddTable(l.table)
	for _, ch := range l.tagged {
		c.AddChain(ch)
	}
	for _, ch := range l.base {
		c.AddChain(ch)
		c.FlushChain(ch)
	}
	for _, r := range l.baseRules(rec.Names()) {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: create table %s: %w", tableName, err)
	}
	for _, dev := range devs {
		if !slices.Contains(rec.Names(), dev) {
			continue // it was on before smolvm: not ours to change
		}
		if err := f.setSysctl(forwardingKey(dev), "1"); err != nil {
			return fmt.Errorf("firewall: enable forwarding on %s: %w", dev, err)
		}
	}
	return nil
}

// AddVM installs the VM's rules (after EnsureBase), replacing any it had.
// The TAP must exist: AddVM turns on its forwarding (the VM's egress),
// sets route_localnet so forwards on 127.0.0.1 can reach the guest, makes
// it answer ARP only for its own address, and turns IPv6 off on it. These
// settings go with the device.
func (f *Firewall) AddVM(r VMRules) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := f.ensureBase(); err != nil {
		return err
	}
	for _, s := range []struct{ key, val string }{
		{"net/ipv4/conf/" + r.TAP + "/route_localnet", "1"},
		{forwardingKey(r.TAP), "1"},
		{"net/ipv4/conf/" + r.TAP + "/arp_ignore", "2"},
		{"net/ipv6/conf/" + r.TAP + "/disable_ipv6", "1"},
	} {
		err := f.setSysctl(s.key, s.val)
		if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(s.key, "net/ipv6/") {
			continue // IPv6 is off on the whole host
		}
		if err != nil {
			return fmt.Errorf("firewall: vm %q: tap %s: %w", r.ID, r.TAP, err)
		}
	}
	l := newLayout()
	if err := f.ensureResolvedSet(l, r.ID); err != nil {
		return fmt.Errorf("firewall: vm %q: %w", r.ID, err)
	}
	err = f.replace(l, func(tr TaggedRule) bool { return tr.VMID == r.ID && tr.Kind == RuleVM }, l.vmRules(r))
	if err != nil {
		return fmt.Errorf("firewall: vm %q: %w", r.ID, err)
	}
	return nil
}

// RemoveVM deletes every rule of the VM, its forwards included. A missing
// table or VM is not an error.
func (f *Firewall) RemoveVM(id string) error {
	if err := f.replace(newLayout(), func(tr TaggedRule) bool { return tr.VMID == id }, nil); err != nil {
		return fmt.Errorf("firewall: remove vm %q: %w", id, err)
	}
	if err := f.deleteResolvedSet(id); err != nil {
		return fmt.Errorf("firewall: remove vm %q: %w", id, err)
	}
	return nil
}

// AddForward installs a TCP forward of p.HostAddr:p.HostPort to
// p.GuestIP:p.GuestPort, replacing the VM's earlier forward of the same
// host address and port. It DNATs connections arriving from outside
// (prerouting) and those the host makes itself (output); connections from
// the host to 127.0.0.1 leave towards the guest with the TAP's address
// (see AddVM). A host address and port another VM forwards is
// ErrForwardInUse.
func (f *Firewall) AddForward(p PortForward) error {
	p, err := p.normalize()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := f.ensureBase(); err != nil {
		return err
	}
	l := newLayout()
	same := func(tr TaggedRule) bool {
		return tr.Kind == RuleForward && tr.HostAddr == p.HostAddr && tr.HostPort == p.HostPort
	}
	rules, err := f.list(l)
	if err != nil {
		return fmt.Errorf("firewall: vm %q: %w", p.VMID, err)
	}
	for _, tr := range rules {
		if same(tr) && tr.VMID != p.VMID {
			return fmt.Errorf("firewall: vm %q: %w: %v:%d goes to vm %q", p.VMID, ErrForwardInUse, p.HostAddr, p.HostPort, tr.VMID)
		}
	}
	err = f.replace(l, func(tr TaggedRule) bool { return tr.VMID == p.VMID && same(tr) }, l.forwardRules(p))
	if err != nil {
		return fmt.Errorf("firewall: vm %q: forward %v:%d: %w", p.VMID, p.HostAddr, p.HostPort, err)
	}
	return nil
}

// RemoveForward deletes the VM's forward of hostAddr:hostPort (an invalid
// hostAddr means DefaultForwardAddr). A missing forward is not an error.
func (f *Firewall) RemoveForward(vmID string, hostAddr netip.Addr, hostPort uint16) error {
	if !hostAddr.IsValid() {
		hostAddr = DefaultForwardAddr
	}
	hostAddr = hostAddr.Unmap()
	match := func(tr TaggedRule) bool {
		return tr.VMID == vmID && tr.Kind == RuleForward && tr.HostAddr == hostAddr && tr.HostPort == hostPort
	}
	if err := f.replace(newLayout(), match, nil); err != nil {
		return fmt.Errorf("firewall: vm %q: remove forward %v:%d: %w", vmID, hostAddr, hostPort, err)
	}
	return nil
}

// Rules lists the rules that belong to VMs, in chain order. A missing
// table has none.
func (f *Firewall) Rules() ([]TaggedRule, error) {
	rules, err := f.list(newLayout())
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	return rules, nil
}

// DeleteTable removes the table and all its rules, and puts back the
// forwarding EnsureBase turned on (where it is still on). A missing table
// is not an error. route_localnet and the other settings AddVM made stay:
// they belong to TAP devices and go with them.
func (f *Firewall) DeleteTable() error {
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return f.deleteTable()
}

// DeleteTableIfUnused is DeleteTable once no VM has rules left; it reports
// whether it deleted. The check and the delete hold the lock AddVM takes,
// so a VM starting meanwhile keeps its rules.
func (f *Firewall) DeleteTableIfUnused() (bool, error) {
	unlock, err := f.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	rules, err := f.list(newLayout())
	if err != nil {
		return false, fmt.Errorf("firewall: %w", err)
	}
	if len(rules) > 0 {
		return false, nil
	}
	return true, f.deleteTable()
}

func (f *Firewall) deleteTable() error {
	// Forwarding first: the table's scope rule must outlive it.
	if err := f.restoreForwarding(); err != nil {
		return err
	}
	c, err := f.conn()
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	c.DelTable(newLayout().table)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("firewall: delete table %s: %w", tableName, err)
	}
	return nil
}

// list reads the tagged rules of every per-VM chain that exists.
func (f *Firewall) list(l *layout) ([]TaggedRule, error) {
	c, err := f.conn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChainsOfTableFamily(l.table.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []TaggedRule
	for _, ch := range l.tagged {
		if !slices.ContainsFunc(chains, func(k *nftables.Chain) bool { return k.Table.Name == tableName && k.Name == ch.Name }) {
			continue
		}
		rules, err := c.GetRules(l.table, ch)
		if err != nil {
			return nil, fmt.Errorf("list chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			tr, ok := parseComment(ruleComment(r))
			if !ok {
				continue
			}
			tr.Chain, tr.Handle = ch.Name, r.Handle
			out = append(out, tr)
		}
	}
	return out, nil
}

// replace deletes the tagged rules del matches and adds add, in one
// transaction. A rule another process deleted meanwhile makes the
// transaction fail with ENOENT; it is then retried on a fresh listing.
func (f *Firewall) replace(l *layout, del func(TaggedRule) bool, add []*nftables.Rule) error {
	const attempts = 3
	var err error
	for range attempts {
		var rules []TaggedRule
		if rules, err = f.list(l); err != nil {
			return err
		}
		var c *nftables.Conn
		if c, err = f.conn(); err != nil {
			return err
		}
		n := 0
		for _, tr := range rules {
			if del(tr) {
				n++
				if err = c.DelRule(&nftables.Rule{Table: l.table, Chain: l.chains[tr.Chain], Handle: tr.Handle}); err != nil {
					return err
				}
			}
		}
		for _, r := range add {
			c.AddRule(r)
		}
		if n == 0 && len(add) == 0 {
			return nil
		}
		if err = c.Flush(); err == nil || !errors.Is(err, unix.ENOENT) {
			return err
		}
		if len(add) == 0 && !f.tableExists() {
			return nil
		}
	}
	return err
}

func (f *Firewall) tableExists() bool {
	c, err := f.conn()
	if err != nil {
		return false
	}
	_, err = c.ListTableOfFamily(tableName, nftables.TableFamilyINet)
	return err == nil
}
