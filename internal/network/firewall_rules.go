package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The ruleset is built by the pure functions in this file; firewall.go
// sends it to the kernel.
//
// Layout of table inet smolvm. The base chains (hooked) hold only the
// shared rules and are rewritten whole by EnsureBase; every per-VM rule
// lives in a regular chain the base chain jumps to, so rewriting the base
// never touches them:
//
//	guard       (filter, prerouting,   smol* in: IPv6, broadcast, multicast, 127/8, 169.254/16,
//	             priority raw)         0/8 drop; jump vm-guard (the guest's own source address
//	                                   accept); else drop: a guest spoofing another source
//	input       (filter, input)        smol* in: 169.254/16 drop, established/related accept,
//	                                   jump vm-input (a VM's DNS to its gateway), else drop
//	forward     (filter, forward)      in from an interface whose forwarding smolvm turned on,
//	                                   to anything but smol*: drop; 169.254/16 from smol*
//	                                   drop; established/related accept; smol* -> smol* drop;
//	                                   jump vm-forward; smol* in: drop; smol* out: drop (only
//	                                   replies and our forwards reach a guest)
//	prerouting  (nat, dstnat)          jump vm-prerouting
//	output      (nat, dstnat)          jump vm-output
//	postrouting (nat, srcnat)          127.0.0.0/8 out of smol*: masquerade; jump vm-postrouting
const (
	tableName = "smolvm"
	tapPrefix = "smol"

	chainGuard          = "guard"
	chainInput          = "input"
	chainForward        = "forward"
	chainPrerouting     = "prerouting"
	chainOutput         = "output"
	chainPostrouting    = "postrouting"
	chainVMGuard        = "vm-guard"
	chainVMInput        = "vm-input"
	chainVMForward      = "vm-forward"
	chainVMPrerouting   = "vm-prerouting"
	chainVMOutput       = "vm-output"
	chainVMPostrouting  = "vm-postrouting"
	baseComment         = "smolvm base"
	vmTagPrefix         = "vm:"
	fwdTagPrefix        = "fwd:"
	maxCommentLen       = 127 // what the nft CLI accepts
	ipv4SaddrOffset     = 12
	ipv4DaddrOffset     = 16
	tcpDportOffset      = 2
	ifnameSize          = unix.IFNAMSIZ
	ctStatusDNATFlagBit = 0x20 // IPS_DST_NAT
)

// DefaultForwardAddr is the host address a PortForward listens on when it
// names none.
var DefaultForwardAddr = netip.MustParseAddr("127.0.0.1")

var (
	loopbackNet  = netip.MustParsePrefix("127.0.0.0/8")
	linkLocalNet = netip.MustParsePrefix("169.254.0.0/16") // cloud metadata lives here
	thisNet      = netip.MustParsePrefix("0.0.0.0/8")
)

// layout is the table and its chains, as nftables objects.
type layout struct {
	table  *nftables.Table
	chains map[string]*nftables.Chain
	// base lists the hooked chains in creation order; tagged the regular
	// chains that hold per-VM rules.
	base, tagged []*nftables.Chain
}

func newLayout() *layout {
	t := &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
	accept := nftables.ChainPolicyAccept
	hook := func(name string, typ nftables.ChainType, h *nftables.ChainHook, p *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: h, Priority: p, Policy: &accept}
	}
	l := &layout{table: t, chains: map[string]*nftables.Chain{}}
	for _, name := range []string{chainVMGuard, chainVMInput, chainVMForward, chainVMPrerouting, chainVMOutput, chainVMPostrouting} {
		c := &nftables.Chain{Name: name, Table: t}
		l.tagged = append(l.tagged, c)
		l.chains[name] = c
	}
	l.base = []*nftables.Chain{
		hook(chainGuard, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw),
		hook(chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter),
		hook(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter),
		hook(chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		hook(chainOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		hook(chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
	}
	for _, c := range l.base {
		l.chains[c.Name] = c
	}
	return l
}

func (l *layout) rule(chain, comment string, exprs ...[]expr.Any) *nftables.Rule {
	var all []expr.Any
	for _, e := range exprs {
		all = append(all, e...)
	}
	return &nftables.Rule{
		Table:    l.table,
		Chain:    l.chains[chain],
		Exprs:    all,
		UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
	}
}

// baseRules are the shared rules of the hooked chains. enabled lists the
// interfaces whose forwarding smolvm turned on (see EnsureBase): what
// arrives on them is forwarded only to VMs.
func (l *layout) baseRules(enabled []string) []*nftables.Rule {
	c := baseComment
	tap := iifname(tapPrefix + "*")
	drop := verdict(expr.VerdictDrop)
	rules := []*nftables.Rule{
		// Guests have IPv6 off, but a hostile one can turn it on: nothing
		// of it gets past the TAP, so no IPv6 path needs its own rules.
		l.rule(chainGuard, c, tap, nfproto(unix.NFPROTO_IPV6), drop),
		l.rule(chainGuard, c, tap, pktTypeNot(unix.PACKET_HOST), drop),
		l.rule(chainGuard, c, tap, fibDaddrType(unix.RTN_BROADCAST), drop),
		l.rule(chainGuard, c, tap, fibDaddrType(unix.RTN_MULTICAST), drop),
		l.rule(chainGuard, c, tap, ipv4(), ip4Prefix(ipv4DaddrOffset, loopbackNet, expr.CmpOpEq), drop),
		l.rule(chainGuard, c, tap, ipv4(), ip4Prefix(ipv4DaddrOffset, linkLocalNet, expr.CmpOpEq), drop),
		l.rule(chainGuard, c, tap, ipv4(), ip4Prefix(ipv4DaddrOffset, thisNet, expr.CmpOpEq), drop),
		l.rule(chainGuard, c, tap, jump(chainVMGuard)),
		// Whatever vm-guard did not accept: a source other than the VM's
		// own address, or a smol* device no VM claimed.
		l.rule(chainGuard, c, tap, drop),

		l.rule(chainInput, c, tap, ipv4(), ip4Prefix(ipv4DaddrOffset, linkLocalNet, expr.CmpOpEq), drop),
		l.rule(chainInput, c, tap, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept)),
		l.rule(chainInput, c, tap, jump(chainVMInput)),
		l.rule(chainInput, c, tap, drop),
	}
	// Before the replies: before smolvm, an interface with forwarding off
	// forwarded no replies either.
	for _, dev := range enabled {
		rules = append(rules, l.rule(chainForward, c, iifname(dev), oifname(tapPrefix+"*", expr.CmpOpNeq), drop))
	}
	rules = append(rules,
		l.rule(chainForward, c, tap, ipv4(), ip4Prefix(ipv4DaddrOffset, linkLocalNet, expr.CmpOpEq), drop),
		l.rule(chainForward, c, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept)),
		l.rule(chainForward, c, tap, oifname(tapPrefix+"*", expr.CmpOpEq), drop),
		l.rule(chainForward, c, jump(chainVMForward)),
		// A smol* device no VM claimed (AddVM) gets nothing through.
		l.rule(chainForward, c, tap, drop),
		// Into a guest only replies (above) and connections one of our
		// forwards DNATed (vm-forward): a neighbour with a route to the VM
		// subnet reaches nothing else.
		l.rule(chainForward, c, oifname(tapPrefix+"*", expr.CmpOpEq), drop),
	)
	return append(rules,
		l.rule(chainPrerouting, c, jump(chainVMPrerouting)),
		l.rule(chainOutput, c, jump(chainVMOutput)),

		// The host's own connections to a forward on 127.0.0.1 leave with
		// that source; the guest could not answer it.
		l.rule(chainPostrouting, c, ipv4(), oifname(tapPrefix+"*", expr.CmpOpEq), ip4Prefix(ipv4SaddrOffset, loopbackNet, expr.CmpOpEq), masq()),
		l.rule(chainPostrouting, c, jump(chainVMPostrouting)),
	)
}

// vmComment and forwardComment are the tags rules carry in their comment.
func vmComment(id string) string { return vmTagPrefix + id }

func forwardComment(id string, host netip.AddrPort) string {
	return vmTagPrefix + id + " " + fwdTagPrefix + host.String()
}

// vmRules are the rules of one VM, all tagged vm:<id>.
func (l *layout) vmRules(r VMRules) []*nftables.Rule {
	c := vmComment(r.ID)
	// Only the VM's own address gets in at all (the guard chain drops the
	// rest): no spoofing another VM, the host or the outside.
	guard := l.rule(chainVMGuard, c, iifname(r.TAP), ipv4(), ip4Addr(ipv4SaddrOffset, r.GuestIP, expr.CmpOpEq), verdict(expr.VerdictAccept))
	rules := append([]*nftables.Rule{guard}, l.dnsRules(r)...)
	if !r.Egress {
		return append(rules, l.rule(chainVMForward, c, iifname(r.TAP), verdict(expr.VerdictDrop)))
	}
	rules = append(rules, l.egressRules(r)...)
	return append(rules, l.rule(chainVMPostrouting, c, ipv4(), iifname(r.TAP), oifname(tapPrefix+"*", expr.CmpOpNeq), masq()))
}

// forwardRules are the rules of one port forward, tagged vm:<id> and
// fwd:<addr>:<port>. HostAddr must be normalized (see PortForward.normalize).
func (l *layout) forwardRules(p PortForward) []*nftables.Rule {
	c := forwardComment(p.VMID, netip.AddrPortFrom(p.HostAddr, p.HostPort))
	dnat := dnatTo(p.GuestIP, p.GuestPort)
	port := tcpDport(p.HostPort)
	var rules []*nftables.Rule
	switch {
	case p.HostAddr.IsUnspecified():
		// Every local address. From outside, never 127.0.0.0/8: a
		// neighbour could otherwise reach a loopback-only forward.
		rules = append(rules,
			l.rule(chainVMPrerouting, c, ipv4(), ip4Prefix(ipv4DaddrOffset, loopbackNet, expr.CmpOpNeq), fibDaddrLocal(), port, dnat),
			l.rule(chainVMOutput, c, ipv4(), fibDaddrLocal(), port, dnat))
	case p.HostAddr.IsLoopback():
		// Loopback is only reachable from the host itself: output hook only.
		rules = append(rules, l.rule(chainVMOutput, c, ipv4(), ip4Addr(ipv4DaddrOffset, p.HostAddr, expr.CmpOpEq), port, dnat))
	default:
		match := ip4Addr(ipv4DaddrOffset, p.HostAddr, expr.CmpOpEq)
		rules = append(rules,
			l.rule(chainVMPrerouting, c, ipv4(), match, port, dnat),
			l.rule(chainVMOutput, c, ipv4(), match, port, dnat))
	}
	return append(rules, l.rule(chainVMForward, c, ipv4(), ctStatusDNAT(),
		ip4Addr(ipv4DaddrOffset, p.GuestIP, expr.CmpOpEq), tcpDport(p.GuestPort), verdict(expr.VerdictAccept)))
}

// parseComment reads the tags of a rule's comment; ok is false for
// comments that carry no vm tag (base rules, foreign rules).
func parseComment(comment string) (tr TaggedRule, ok bool) {
	for _, f := range strings.Fields(comment) {
		switch {
		case strings.HasPrefix(f, vmTagPrefix):
			tr.VMID = strings.TrimPrefix(f, vmTagPrefix)
		case strings.HasPrefix(f, fwdTagPrefix):
			ap, err := netip.ParseAddrPort(strings.TrimPrefix(f, fwdTagPrefix))
			if err != nil {
				return tr, false
			}
			tr.Kind, tr.HostAddr, tr.HostPort = RuleForward, ap.Addr(), ap.Port()
		}
	}
	if tr.VMID == "" {
		return tr, false
	}
	if tr.Kind == "" {
		tr.Kind = RuleVM
	}
	return tr, true
}

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// Expression helpers. Each returns the expressions of one match or action,
// using register 1 (and 2 for DNAT ports).

func ifnameBytes(name string) []byte {
	if p, ok := strings.CutSuffix(name, "*"); ok {
		return []byte(p) // prefix match: compare only the prefix bytes
	}
	b := make([]byte, ifnameSize)
	copy(b, name)
	return b
}

func iifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}
}

func oifname(name string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameBytes(name)},
	}
}

func ipv4() []expr.Any { return nfproto(unix.NFPROTO_IPV4) }

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// pktTypeNot matches frames whose link-layer destination is not of type
// t (PACKET_HOST: addressed to this host's MAC).
func pktTypeNot(t byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{t}},
	}
}

func ip4Addr(offset uint32, a netip.Addr, op expr.CmpOp) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]},
	}
}

func ip4Prefix(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	b := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]},
	}
}

func tcpDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpDportOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func ctState(bits uint32) []expr.Any { return ctBits(expr.CtKeySTATE, bits) }

func ctStatusDNAT() []expr.Any { return ctBits(expr.CtKeySTATUS, ctStatusDNATFlagBit) }

func fibDaddrLocal() []expr.Any { return fibDaddrType(unix.RTN_LOCAL) }

func fibDaddrType(t uint32) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(t)},
	}
}

func dnatTo(ip netip.Addr, port uint16) []expr.Any {
	b := ip.As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// validID checks that an id can be a tag: printable, no spaces.
func validID(id string) error {
	if id == "" || len(forwardComment(id, netip.MustParseAddrPort("255.255.255.255:65535"))) > maxCommentLen {
		return fmt.Errorf("%w: vm id %q: want 1-%d characters", ErrInvalidRule, id, maxCommentLen-len("vm: fwd:255.255.255.255:65535"))
	}
	for _, r := range id {
		if r <= ' ' || r >= 0x7f {
			return fmt.Errorf("%w: vm id %q: only printable ASCII without spaces", ErrInvalidRule, id)
		}
	}
	return nil
}
