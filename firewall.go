package smolvm

import (
	"fmt"
	"net/netip"

	"github.com/smolvm/smolvm/internal/network"
)

// The TAP-mode rules of a VM live in smolvm's nftables table in the host's
// network namespace: NAT for egress, isolation from other VMs and from the
// host's own services, and DNAT for exposed ports. Every rule is tagged
// with the VM's id, so delete and doctor find them.

func firewallAddVM(id string, n NetworkInfo, cfg VMConfig, forwards []PortForward) error {
	r, err := vmRules(id, n, cfg)
	if err != nil {
		return err
	}
	// A forward must not take over a port a host program serves (DNAT
	// runs before the local socket): check again at each start, since
	// something may have started listening while the VM was stopped.
	for _, f := range forwards {
		if err := checkHostPort(f.HostAddr, f.HostPort); err != nil {
			return fmt.Errorf("forward %s:%d -> guest port %d: %w", f.HostAddr, f.HostPort, f.GuestPort, err)
		}
	}
	fw := network.NewFirewall(0) // AddVM ensures the base table and chains
	if err := fw.AddVM(r); err != nil {
		return err
	}
	for _, f := range forwards {
		if err := firewallAddForward(id, n, f); err != nil {
			fw.RemoveVM(id)
			return err
		}
	}
	return nil
}

func firewallAddForward(id string, n NetworkInfo, f PortForward) error {
	guest, err := netip.ParseAddr(n.GuestIP)
	if err != nil {
		return fmt.Errorf("firewall: guest address: %w", err)
	}
	host, err := netip.ParseAddr(f.HostAddr)
	if err != nil {
		return fmt.Errorf("firewall: host address: %w", err)
	}
	return network.NewFirewall(0).AddForward(network.PortForward{
		VMID: id, HostAddr: host, HostPort: uint16(f.HostPort), GuestIP: guest, GuestPort: uint16(f.GuestPort),
	})
}

func firewallRemoveForward(id, hostAddr string, hostPort int) error {
	host, err := netip.ParseAddr(hostAddr)
	if err != nil {
		return fmt.Errorf("firewall: host address: %w", err)
	}
	return network.NewFirewall(0).RemoveForward(id, host, uint16(hostPort))
}

// firewallRemoveVM deletes every rule of the VM, and the table itself once
// no VM has rules left in it, which also puts back the forwarding smolvm
// turned on.
func firewallRemoveVM(id string) error {
	fw := network.NewFirewall(0)
	if err := fw.RemoveVM(id); err != nil {
		return err
	}
	_, err := fw.DeleteTableIfUnused()
	return err
}
