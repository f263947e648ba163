// Package network gives each VM its link to the host: a TAP device with an
// address from smolvm's pool when running as root, or QEMU's user-mode
// networking with host port forwards when not.
package network

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultPool is the range VM addresses come from: one /30 per VM (host
// end, guest end). It is rarely used by real networks; SMOLVM_SUBNET
// overrides it.
var DefaultPool = netip.MustParsePrefix("172.29.0.0/16")

// User-mode networking addresses, as QEMU's slirp defines them.
var (
	UserGuestIP = netip.MustParsePrefix("10.0.2.15/24")
	UserGateway = netip.MustParseAddr("10.0.2.2")
	UserDNS     = netip.MustParseAddr("10.0.2.3")
)

// Pool hands out /30 subnets from a prefix by lease index.
type Pool struct{ Prefix netip.Prefix }

// Size is how many VMs the pool can address.
func (p Pool) Size() int {
	bits := 32 - p.Prefix.Bits()
	if bits < 2 {
		return 0
	}
	return 1 << (bits - 2)
}

// Addrs returns the host and guest addresses of lease idx, as /30s.
func (p Pool) Addrs(idx int) (host, guest netip.Prefix, err error) {
	if idx < 0 || idx >= p.Size() {
		return host, guest, fmt.Errorf("lease %d outside pool %s", idx, p.Prefix)
	}
	base := p.Prefix.Masked().Addr().As4()
	n := binary.BigEndian.Uint32(base[:]) + uint32(idx)*4
	var h, g [4]byte
	binary.BigEndian.PutUint32(h[:], n+1)
	binary.BigEndian.PutUint32(g[:], n+2)
	return netip.PrefixFrom(netip.AddrFrom4(h), 30), netip.PrefixFrom(netip.AddrFrom4(g), 30), nil
}

// ParsePool reads a pool prefix such as "172.29.0.0/16".
func ParsePool(s string) (Pool, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return Pool{}, fmt.Errorf("invalid VM subnet %q: want an IPv4 prefix of /30 or larger, such as 172.29.0.0/16", s)
	}
	return Pool{Prefix: p.Masked()}, nil
}

// TAPName is the host device name of the TAP of a VM instance (see
// hypervisor.Name): unique on the host, short enough for IFNAMSIZ, and
// prefixed so leftovers are easy to find.
func TAPName(instance string) string {
	sum := sha256.Sum256([]byte(instance))
	return "smol" + hex.EncodeToString(sum[:5])
}

// MAC is the guest's stable, locally administered MAC address.
func MAC(id string) string {
	sum := sha256.Sum256([]byte("mac:" + id))
	sum[0] = sum[0]&0xfe | 0x02
	return net.HardwareAddr(sum[:6]).String()
}

// CanUseTAP reports whether this process may create TAP devices.
func CanUseTAP() bool {
	if os.Geteuid() != 0 {
		return false
	}
	_, err := os.Stat("/dev/net/tun")
	return err == nil
}

// TAP describes a VM's TAP device.
type TAP struct {
	Name string       // device name (TAPName)
	Host netip.Prefix // the host end's address
	// Alias is stored as the device's ifalias, so that leak checks and
	// doctor can tell which VM (and which state directory) a device is for.
	Alias string
}

// AliasPrefix starts the ifalias of every smolvm TAP device; the rest is
// the VM's data directory.
const AliasPrefix = "smolvm:"

// TAPAliases returns the smolvm TAP devices on the host by name, with
// their aliases (empty for devices made before aliases were set).
func TAPAliases() map[string]string {
	out := map[string]string{}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if a := l.Attrs(); strings.HasPrefix(a.Name, "smol") && l.Type() == "tuntap" {
			out[a.Name] = a.Alias
		}
	}
	return out
}

// CreateTAP creates the TAP device with the host address, or adopts it if
// a previous run of the same VM left it, and brings it up.
func CreateTAP(t TAP) error {
	name, host := t.Name, t.Host
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("tap %s: %w", name, err)
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		// LinkAdd leaves the creating file descriptors open; the device is
		// persistent, so QEMU reopens it by name.
		for _, f := range tap.Fds {
			f.Close()
		}
		link = tap
	}
	if t.Alias != "" {
		if err := netlink.LinkSetAlias(link, t.Alias); err != nil {
			DeleteTAP(name)
			return fmt.Errorf("tap %s: alias: %w", name, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: host.Addr().AsSlice(), Mask: net.CIDRMask(host.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		DeleteTAP(name)
		return fmt.Errorf("tap %s: address %s: %w", name, host, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		DeleteTAP(name)
		return fmt.Errorf("tap %s: up: %w", name, err)
	}
	return nil
}

// AddrInUse reports whether an address of any host interface lies in
// prefix: another state directory's VM, or a real network, uses it.
func AddrInUse(prefix netip.Prefix) bool {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if prefix.Overlaps(netip.PrefixFrom(ip, ones)) {
			return true
		}
	}
	return false
}

// DeleteTAP removes the TAP device; a missing device is not an error.
func DeleteTAP(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// TAPExists reports whether the device is present.
func TAPExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// FreePort asks the kernel for a free TCP port on addr. Another process may
// take it before QEMU binds it; QEMU then fails to start and the caller
// sees that error.
func FreePort(addr string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
