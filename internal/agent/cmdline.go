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
	Mounts   []Mount
	// Proxy is the HTTP proxy of a user-mode VM: its only way out.
	Proxy netip.AddrPort
}

// Mount is a host folder shared into the guest over virtio-9p.
type Mount struct {
	Tag      string // the device's mount_tag
	Path     string // where it appears in the guest
	ReadOnly bool
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
		case "smolvm.proxy":
			cfg.Proxy, err = netip.ParseAddrPort(val)
		case "smolvm.hostname":
			cfg.Hostname = val
		case "smolvm.root":
			cfg.Root = val
		case "smolvm.rootfstype":
			cfg.RootType = val
		case "smolvm.mount":
			var m Mount
			m, err = parseMount(val)
			cfg.Mounts = append(cfg.Mounts, m)
		case "smolvm.debug":
			cfg.Debug = val == "" || val == "1"
		}
		if err != nil {
			return BootConfig{}, fmt.Errorf("kernel command line %s: %w", field, err)
		}
	}
	return cfg, nil
}

// parseMount reads TAG:PATH:ro|rw.
func parseMount(val string) (Mount, error) {
	parts := strings.Split(val, ":")
	if len(parts) != 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "/") || (parts[2] != "ro" && parts[2] != "rw") {
		return Mount{}, fmt.Errorf("want TAG:/PATH:ro|rw")
	}
	return Mount{Tag: parts[0], Path: parts[1], ReadOnly: parts[2] == "ro"}, nil
}

// ProxyEnv is the environment that sends a guest's HTTP clients through
// proxy (curl, wget, apk, pip, npm and git read these).
func ProxyEnv(proxy netip.AddrPort) map[string]string {
	if !proxy.IsValid() {
		return nil
	}
	u := "http://" + proxy.String()
	env := map[string]string{}
	for _, k := range []string{"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"} {
		env[k] = u
	}
	env["no_proxy"], env["NO_PROXY"] = "localhost,127.0.0.1,::1", "localhost,127.0.0.1,::1"
	return env
}
