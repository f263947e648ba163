package smolvm

import (
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// limitLeftovers finds cgroups (under this process's hierarchies'
// smolvm/) whose instance is no VM's here and no live VM process's, and
// from-guest rate rules whose TAP device is gone.
func limitLeftovers(vms []VMInfo, procs []vmProcess) []Leftover {
	var out []Leftover
	instances := map[string]bool{}
	for _, vm := range vms {
		if _, inst, ok := hypervisor.ParseName(vm.Process); ok {
			instances[inst] = true
		}
	}
	for _, p := range procs {
		if _, inst, ok := hypervisor.ParseName(p.name); ok {
			instances[inst] = true
		}
	}
	if h, ok := cgroupHost(); ok {
		for _, g := range h.List() {
			if !instances[g.Name()] {
				out = append(out, Leftover{Kind: "cgroup", Name: g.Dirs[0], Detail: "cgroup of a VM that does not exist", cgroup: g})
			}
		}
	}
	for _, tap := range network.ShapedTAPs() {
		if !network.TAPExists(tap) {
			out = append(out, Leftover{Kind: "shape", Name: tap, Detail: "network rate rule (nftables table " + network.ShapeTable + ") of a TAP device that is gone"})
		}
	}
	return out
}

// removeLimitLeftover removes a leftover limitLeftovers found; ok is
// false for other kinds.
func removeLimitLeftover(l Leftover) (ok bool, err error) {
	switch l.Kind {
	case "cgroup":
		return true, l.cgroup.Remove()
	case "shape":
		return true, network.UnshapeTAP(l.Name)
	}
	return false, nil
}

// checkCgroups says whether CPU and memory limits can be enforced here.
func checkCgroups() Check {
	c := Check{Name: "cgroups", Optional: true}
	if os.Geteuid() != 0 {
		c.Detail = "not running as root: --cpu-limit and --memory-limit are refused (disk limits still work)"
		c.Fix = "run smolvm as root (sudo) for CPU and memory limits"
		return c
	}
	h, err := cgroup.Detect()
	switch {
	case err != nil:
		c.Detail = err.Error() + ": --cpu-limit and --memory-limit are refused"
		c.Fix = "mount a cgroup v2 hierarchy with the cpu and memory controllers at /sys/fs/cgroup"
	case h.V2 != "":
		c.OK, c.Detail = true, "cgroup v2 at "+h.V2+": VMs with CPU or memory limits run in "+filepath.Join(h.V2, cgroup.Dir, "<instance>")
	default:
		c.OK, c.Detail = true, "cgroup v1: VMs with CPU or memory limits run in "+filepath.Join(h.CPU, cgroup.Dir, "<instance>")+" and "+filepath.Join(h.Memory, cgroup.Dir, "<instance>")
	}
	return c
}

// cgroupHost is the cgroup hierarchy, for doctor and leftovers; ok is
// false where there is none usable.
func cgroupHost() (cgroup.Host, bool) {
	if os.Geteuid() != 0 {
		return cgroup.Host{}, false
	}
	h, err := cgroup.Detect()
	return h, err == nil
}
