package agent

import (
	"encoding/binary"
	"fmt"
	"net"
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
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.IP.Addr().AsSlice(), Mask: net.CIDRMask(cfg.IP.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", cfg.IP, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up %s: %w", netDevice, err)
	}
	if cfg.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("default route via %s: %w", cfg.Gateway, err)
		}
	}
	step("route added")
	if len(cfg.DNS) > 0 {
		var b strings.Builder
		for _, d := range cfg.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644)
	}
	// Without an announcement the host's first packet to us waits on ARP
	// resolution, which stalls the first connection by up to a second.
	if err := gratuitousARP(link, cfg.IP.Addr().AsSlice()); err != nil {
		console("smolvm-init: gratuitous ARP: %v", err)
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
	var keys []ssh.PublicKey
	for rest := authKeys; len(strings.TrimSpace(string(rest))) > 0; {
		pub, _, _, r, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			return nil, fmt.Errorf("authorized keys: %w", err)
		}
		keys = append(keys, pub)
		rest = r
	}
	return NewServer(ServerConfig{HostKey: signer, AuthorizedKeys: keys, EnvFile: persistentEnvFile, Poweroff: powerOff, Reaper: reaper,
		PasswordHashFile: "/etc/smolvm/root_password", AuthorizedKeysFile: "/etc/smolvm/authorized_keys"})
}
