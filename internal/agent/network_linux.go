package agent

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

const netDevice = "eth0"

func configureNetwork(cfg BootConfig, step func(string)) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	if !cfg.IP.IsValid() {
		return nil
	}
	var link netlink.Link
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if link, err = netlink.LinkByName(netDevice); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s: %w", netDevice, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	step("eth0 found")
	if err := addressLink(link, cfg.IP, cfg.Gateway, cfg.DNS); err != nil {
		return err
	}
	step("addressed")
	return nil
}

// addressLink gives link the IPv4 address ip (in place of any other), the
// default route via gw (if valid) and the name servers dns (if any), then
// announces the address. Boot and a clone's new identity share it.
func addressLink(link netlink.Link, ip netip.Prefix, gw netip.Addr, dns []netip.Addr) error {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), 32)}}
	// The others go first: a new address in an old one's subnet would be
	// its secondary, and the kernel deletes secondaries with their primary.
	old, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", netDevice, err)
	}
	for _, a := range old {
		if !a.IP.Equal(addr.IP) || a.Mask.String() != addr.Mask.String() {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("remove old address %s: %w", a.IPNet, err)
			}
		}
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", ip, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up %s: %w", netDevice, err)
	}
	if gw.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	if len(dns) > 0 {
		var b strings.Builder
		for _, d := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		// Written through, not replaced: it may be a link elsewhere.
		if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			console("smolvm-init: resolv.conf: %v", err)
		}
	}
	// Without an announcement the host's first packet to us waits on ARP
	// resolution, which stalls the first connection by up to a second
	// (and after a new MAC, the host's neighbour entry would be wrong).
	if err := gratuitousARP(link, ip.Addr().AsSlice()); err != nil {
		console("smolvm-init: gratuitous ARP: %v", err)
	}
	return nil
}

// replaceFile replaces path with data, so readers see the old file or the
// new one, never a half-written one.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".smolvm-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func gratuitousARP(link netlink.Link, ip net.IP) error {
	mac := link.Attrs().HardwareAddr
	if len(mac) != 6 || len(ip) != 4 {
		return fmt.Errorf("unexpected address sizes")
	}
	proto := htons(unix.ETH_P_ARP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	frame := make([]byte, 0, 42)
	frame = append(frame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	frame = append(frame, mac...)
	frame = binary.BigEndian.AppendUint16(frame, unix.ETH_P_ARP)
	frame = binary.BigEndian.AppendUint16(frame, 1)      // Ethernet
	frame = binary.BigEndian.AppendUint16(frame, 0x0800) // IPv4
	frame = append(frame, 6, 4)
	frame = binary.BigEndian.AppendUint16(frame, 1) // request
	frame = append(frame, mac...)
	frame = append(frame, ip...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, ip...)
	sa := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index, Halen: 6}
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	return unix.Sendto(fd, frame, 0, sa)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func newServerFromFiles(keyPEM, authKeys []byte, reaper *Reaper) (*Server, error) {
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	keys, err := parseAuthorizedKeys(authKeys)
	if err != nil {
		return nil, err
	}
	return NewServer(ServerConfig{HostKey: signer, AuthorizedKeys: keys, EnvFile: persistentEnvFile, Poweroff: powerOff, Reaper: reaper,
		PasswordHashFile: "/etc/smolvm/root_password", AuthorizedKeysFile: "/etc/smolvm/authorized_keys"})
}
