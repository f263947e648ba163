package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// Leftover is something of smolvm's that belongs to no VM in the state
// database: debris of a crash or of a killed process.
type Leftover struct {
	Kind   string `json:"kind"` // "process", "tap", "rule", "dir", "cgroup", "shape" or "keeper"
	Name   string `json:"name"` // PID, device, rule tag or path
	Detail string `json:"detail"`

	proc   hypervisor.Process
	vm     string
	cgroup cgroup.Group
}

// FindLeftovers lists QEMU processes, TAP devices, nftables rules and VM
// directories that no VM of this state directory owns. A TAP device or
// rule that a live VM process of another state directory uses is not a
// leftover: it is that VM's.
func FindLeftovers(ctx context.Context, opts ...Option) ([]Leftover, error) {
	s := newSettings(opts)
	vms, err := List(ctx, opts...)
	if err != nil {
		return nil, err
	}
	known := map[string]VMInfo{}  // by id
	byName := map[string]VMInfo{} // by host-unique process name
	for _, vm := range vms {
		known[vm.ID] = vm
		byName[vm.Process] = vm
	}
	procs := vmProcesses()
	var out []Leftover

	vmsDir := filepath.Join(s.home, "vms") + "/"
	var live []vmProcess // processes of real VMs, here or in another state directory
	for _, p := range procs {
		// A process of a known VM is not debris: List has reconciled it
		// (adopted, or killed when its start was interrupted), and one
		// whose start is under way is not to be touched.
		if _, ok := byName[p.name]; !ok && p.uses(vmsDir) {
			out = append(out, Leftover{Kind: "process", Name: strconv.Itoa(p.pid), proc: p.proc, vm: p.name,
				Detail: fmt.Sprintf("QEMU of VM %q, which this state directory does not run", p.id)})
			continue
		}
		live = append(live, p)
	}
	procs = live

	inUse := func(tap string) bool {
		for _, p := range procs {
			if strings.Contains(p.cmdline, "ifname="+tap+",") {
				return true
			}
		}
		return false
	}
	ours := map[string]bool{} // TAPs of this directory's VMs, maybe mid-start
	for _, vm := range vms {
		ours[vm.Network.TAP] = true
	}
	for name, alias := range network.TAPAliases() {
		dir, tagged := strings.CutPrefix(alias, network.AliasPrefix)
		switch {
		case ours[name] || inUse(name):
			continue
		case tagged && !strings.HasPrefix(dir, vmsDir):
			continue // another state directory's: its own doctor decides
		}
		out = append(out, Leftover{Kind: "tap", Name: name, Detail: "TAP device no running VM uses"})
	}

	if rules, err := network.NewFirewall(0).Rules(); err == nil {
		seen := map[string]bool{}
		for _, r := range rules {
			if _, ok := byName[r.VMID]; ok || seen[r.VMID] || procRunning(procs, r.VMID) {
				continue
			}
			seen[r.VMID] = true
			out = append(out, Leftover{Kind: "rule", Name: "vm:" + r.VMID, vm: r.VMID,
				Detail: "nftables rules of a VM that does not exist"})
		}
	}
	if tags, err := network.NewFirewall(0).ResolvedSets(); err == nil {
		for _, tag := range tags {
			if _, ok := byName[tag]; ok || procRunning(procs, tag) || slices.ContainsFunc(out, func(l Leftover) bool { return l.vm == tag }) {
				continue
			}
			out = append(out, Leftover{Kind: "rule", Name: "dns-" + tag, vm: tag,
				Detail: "nftables set of resolved addresses of a VM that does not exist"})
		}
	}

	ents, _ := os.ReadDir(vmsDir)
	for _, e := range ents {
		if _, ok := known[e.Name()]; ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(vmsDir, e.Name())
		if keptDisk(dir) {
			continue // a disk kept on purpose by RetainDiskOnDelete (see kept.go)
		}
		out = append(out, Leftover{Kind: "dir", Name: dir, Detail: "VM directory without a VM"})
	}
	out = append(out, snapshotLeftovers(ctx, s)...)
	out = append(out, limitLeftovers(vms, procs)...)
	out = append(out, keeperLeftovers(vmsDir, known)...)
	return out, nil
}

// snapshotLeftovers finds snapshot directories no snapshot row names:
// captures killed before the rename that nobody holds any more, and
// directories whose row is gone.
func snapshotLeftovers(ctx context.Context, s settings) []Leftover {
	ents, _ := os.ReadDir(snapshotsDir(s.home))
	if len(ents) == 0 {
		return nil
	}
	snaps, err := ListSnapshots(ctx, WithHome(s.home))
	if err != nil {
		return nil
	}
	known := map[string]bool{}
	for _, sn := range snaps {
		known[sn.Name] = true
	}
	var out []Leftover
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() {
			continue
		}
		if tmp, ok := strings.CutPrefix(name, ".tmp-"); ok {
			if flock.Held(snapshotLock(s.home, tmp)) {
				continue // a capture under way
			}
		} else if known[name] {
			continue
		}
		out = append(out, Leftover{Kind: "dir", Name: filepath.Join(snapshotsDir(s.home), name), Detail: "snapshot directory without a snapshot"})
	}
	return out
}

// RemoveLeftovers removes what FindLeftovers found.
func RemoveLeftovers(ctx context.Context, leftovers []Leftover) error {
	var errs []error
	for _, l := range leftovers {
		var err error
		switch l.Kind {
		case "process":
			err = hypervisor.Kill(ctx, l.proc, l.vm)
		case "tap":
			err = network.DeleteTAP(l.Name)
		case "rule":
			err = firewallRemoveVM(l.vm)
		case "dir":
			err = os.RemoveAll(l.Name)
		case "keeper":
			err = removeKeeperLeftover(l)
		default:
			_, err = removeLimitLeftover(l)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", l.Kind, l.Name, err))
		}
	}
	return errors.Join(errs...)
}

type vmProcess struct {
	pid      int
	proc     hypervisor.Process
	id, name string // the VM's id and host-unique name (hypervisor.Name)
	cmdline  string
}

// uses reports whether the process has a file under dir open: QEMU gets
// its files as descriptors, so its command line does not name them.
func (p vmProcess) uses(dir string) bool {
	for _, f := range hypervisor.OpenFiles(p.pid) {
		if strings.HasPrefix(f, dir) {
			return true
		}
	}
	return false
}

// vmProcesses finds every running smolvm VM process on the host, by the
// guest=smolvm-<instance>-<id> name QEMU carries on its command line.
func vmProcesses() []vmProcess {
	var out []vmProcess
	prefix := []byte(hypervisor.NameArg(hypervisor.NamePrefix))
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, prefix) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if pid == os.Getpid() || syscall.Kill(pid, 0) != nil {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			name, ok := bytes.CutPrefix(arg, []byte(hypervisor.NameArg("")))
			if !ok {
				continue
			}
			if id, _, ok := hypervisor.ParseName(string(name)); ok {
				cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
				start, _ := hypervisor.StartTime(pid)
				out = append(out, vmProcess{pid: pid, proc: hypervisor.Process{PID: pid, Start: start}, id: id, name: string(name), cmdline: cmdline})
				break
			}
		}
	}
	return out
}

func procRunning(procs []vmProcess, name string) bool {
	for _, p := range procs {
		if p.name == name {
			return true
		}
	}
	return false
}
