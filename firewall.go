package smolvm

// Temporary: replaced by the nftables integration once internal/network's
// firewall lands.

func firewallAddVM(id string, n NetworkInfo, noEgress bool, forwards []PortForward) error { return nil }
func firewallAddForward(id string, n NetworkInfo, f PortForward) error                    { return nil }
func firewallRemoveForward(id, hostAddr string, hostPort int) error                       { return nil }
func firewallRemoveVM(id string) error                                                    { return nil }
