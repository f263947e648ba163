// Package agent is the guest half of smolvm: PID 1 inside every VM, and the
// SSH server through which the host runs commands.
package agent

import (
	"fmt"
	"net/netip"
	"strings"
)

// BootConfig is what the host tells the guest through the kernel command
// line, under keys of our own ("smolvm.ip=...") so they never clash with
// the kernel's.
type BootConfig struct {
	IP       netip.Prefix // guest address and prefix; zero = no network config
	Gateway  netip.Addr
	DNS      []netip.Addr
	Hostname string
	Root     string // block device of the root filesystem
	RootType string
	Debug    bool // print boot steps with timings to the console
}

// ParseCmdline reads smolvm's keys from a kernel command line. Unknown keys
// are ignored; malformed values of ours are errors, so a host bug is loud.
func ParseCmdline(cmdline string) (BootConfig, error) {
	cfg := BootConfig{Root: "/dev/vda", RootType: "ext4"}
	for _, field := range strings.Fields(cmdline) {
		key, val, _ := strings.Cut(field, "=")
		var err error
		switch key {
		case "smolvm.ip":
			cfg.IP, err = netip.ParsePrefix(val)
		case "smolvm.gw":
			cfg.Gateway, err = netip.ParseAddr(val)
		case "smolvm.dns":
			for _, s := range strings.Split(val, ",") {
				a, perr := netip.ParseAddr(s)
				if perr != nil {
					err = perr
					break
				}
				cfg.DNS = append(cfg.DNS, a)
			}
		case "smolvm.hostname":
			cfg.Hostname = val
		case "smolvm.root":
			cfg.Root = val
		case "smolvm.rootfstype":
			cfg.RootType = val
		case "smolvm.debug":
			cfg.Debug = val == "" || val == "1"
		}
		if err != nil {
			return BootConfig{}, fmt.Errorf("kernel command line %s: %w", field, err)
		}
	}
	return cfg, nil
}
