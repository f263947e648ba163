package smolvm

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// snapshotPlan is what a create from a snapshot takes from it.
type snapshotPlan struct {
	name string
	dir  string
	rec  snapshotRecord
}

// FromSnapshot makes a new VM from the snapshot called name and returns it
// running: from a memory snapshot its processes, memory and files are as
// they were at the capture (it resumes, it does not boot); from a
// DiskOnly snapshot it boots on a copy of the disk. Either way it is a new
// machine: its own id, address, MAC, hostname, SSH host key and client
// key, machine-id, a reseeded RNG and the host's clock. Its disk is a
// copy-on-write overlay on the snapshot's, made in constant time. Options
// may set the id, env and network; sizes are the snapshot's.
func FromSnapshot(ctx context.Context, name string, opts ...Option) (*VM, error) {
	vm, err := newFromSnapshot(ctx, name, opts...)
	if err != nil {
		return nil, err
	}
	if err := vm.Start(ctx); err != nil {
		vm.Delete(context.WithoutCancel(ctx))
		return nil, err
	}
	return vm, nil
}

func newFromSnapshot(ctx context.Context, name string, opts ...Option) (*VM, error) {
	s := newSettings(opts)
	plan, err := loadSnapshotPlan(ctx, s, name)
	if err != nil {
		return nil, opError("create", "", err)
	}
	cfg := plan.rec.Config
	cfg.ID, cfg.RetainDiskOnDelete, cfg.ReuseDisk = "", false, false
	cfg.ExpiresAt = time.Time{} // the snapshot's TTL counts from this create
	if s.config != nil {
		s.config(&cfg)
	}
	// The machine is the snapshot's: memory, CPUs and disk cannot change
	// under a running kernel.
	src := plan.rec.Config
	cfg.MemoryMiB, cfg.VCPUs, cfg.DiskMiB, cfg.Image, cfg.KernelPath, cfg.RootfsPath, cfg.InitrdPath, cfg.BootArgs, cfg.Mounts =
		src.MemoryMiB, src.VCPUs, src.DiskMiB, src.Image, src.KernelPath, src.RootfsPath, src.InitrdPath, src.BootArgs, nil
	return NewFromConfig(ctx, cfg, append(opts, func(s *settings) { s.snapshot = plan })...)
}

// loadSnapshotPlan reads the snapshot and checks it can run on this host.
func loadSnapshotPlan(ctx context.Context, s settings, name string) (*snapshotPlan, error) {
	if err := checkSnapshotName(name); err != nil {
		return nil, err
	}
	st, err := openStore(ctx, s)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	row, err := st.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no snapshot %q (smolvm snapshot list shows them)", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	plan := &snapshotPlan{name: name, dir: snapshotDir(s.home, name)}
	if err := json.Unmarshal(row.Meta, &plan.rec); err != nil {
		return nil, fmt.Errorf("snapshot %q: stored record: %w", name, err)
	}
	if _, err := os.Stat(snapshotDisk(plan.dir)); err != nil {
		return nil, fmt.Errorf("snapshot %q: its disk is gone (%w): remove it (smolvm snapshot rm %s)", name, err, name)
	}
	if !plan.rec.DiskOnly {
		backend, err := newBackend()
		if err != nil {
			return nil, err
		}
		if why := plan.rec.Host.mismatch(currentHostPrint(backend, plan.rec.Kernel)); why != "" {
			return nil, &ValidationError{Field: "snapshot", Value: name, Reason: "its memory cannot be restored on this host: " + why +
				"; take it again, or make a VM from a disk-only snapshot instead"}
		}
	}
	return plan, nil
}

// applySnapshotPlan fills a new VM's runtime record from its snapshot and
// makes its disk: an overlay on the snapshot's.
func (v *VM) applySnapshotPlan(ctx context.Context, plan *snapshotPlan, rt *runtimeRecord) error {
	rt.FromSnapshot = plan.name
	rt.DiskBase = snapshotDisk(plan.dir)
	if !plan.rec.DiskOnly {
		rt.Restore = &hypervisor.SnapshotFiles{State: snapshotState(plan.dir), MemoryID: plan.rec.ID}
		if plan.rec.Memory {
			rt.Restore.Memory = snapshotMemory(plan.dir)
		}
		// The snapshot's own initramfs, in a copy QEMU's user may read.
		rt.RestoreInitrd, rt.RestoreCmdline, rt.RestoreEnv = v.paths.restoreInitrd(), plan.rec.Cmdline, plan.rec.Env
		if err := copyFile(snapshotInitrd(plan.dir), rt.RestoreInitrd); err != nil {
			return err
		}
	}
	return newOverlay(ctx, rt.DiskBase, v.paths.overlay())
}

// reidentify makes a VM resumed from a snapshot a machine of its own: it
// still runs as the snapshot's source did, with its address, keys, names,
// RNG state and clock, until the agent is told who it is now.
func (v *VM) reidentify(ctx context.Context, proxy string) error {
	info := v.Info()
	hostKey, err := os.ReadFile(v.paths.hostKey())
	if err != nil {
		return err
	}
	authKey, err := os.ReadFile(v.paths.clientKeyPub())
	if err != nil {
		return err
	}
	addr, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", info.Network.GuestIP, info.Network.Prefix))
	if err != nil {
		return fmt.Errorf("stored guest address: %w", err)
	}
	gw, err := netip.ParseAddr(info.Network.Gateway)
	if err != nil {
		return fmt.Errorf("stored gateway: %w", err)
	}
	seed := make([]byte, 64)
	rand.Read(seed)
	machineID := make([]byte, 16)
	rand.Read(machineID)
	id := guest.Identity{
		Hostname: v.id, Address: addr, Gateway: gw, MAC: network.MAC(v.id),
		HostKeyPEM: hostKey, AuthorizedKeys: authKey, MachineID: hex.EncodeToString(machineID),
		Seed: seed, Time: time.Now(), Proxy: cmp.Or(proxy, "off"),
	}
	if info.Network.Mode == NetworkUser {
		id.DNS = []netip.Addr{network.UserDNS}
	} else {
		id.DNS = []netip.Addr{gw} // smolvm's resolver (egress.go)
	}
	c, err := guest.DialControl(ctx, v.paths.agentSocket())
	if err != nil {
		return fmt.Errorf("agent control: %w", err)
	}
	defer c.Close()
	if err := c.Identity(ctx, id); err != nil {
		return fmt.Errorf("agent control: new identity: %w", err)
	}
	return nil
}

// Fork makes n new running VMs from this VM's current state; it runs on,
// unchanged (it is paused only for the capture). The children share the
// capture's memory until they write it, and their disks are overlays on
// its disk. The capture is a snapshot of its own (Auto), removed with the
// last child.
func (v *VM) Fork(ctx context.Context, n int) ([]*VM, error) {
	if n < 1 {
		return nil, opError("fork", v.id, &ValidationError{Field: "count", Value: n, Reason: "fork at least one VM"})
	}
	name := "fork-" + v.id
	if len(name) > 52 {
		name = name[:52]
	}
	name += "-" + newInstance()
	if _, err := v.snapshot(ctx, name, snapshotOptions{auto: true}); err != nil {
		return nil, opError("fork", v.id, err)
	}
	var out []*VM
	for range n {
		child, err := FromSnapshot(ctx, name, WithHome(v.s.home), WithLogger(v.s.logger), WithAgent(v.s.agent), WithNetwork(v.s.network))
		if err != nil {
			for _, c := range out {
				c.Delete(context.WithoutCancel(ctx))
			}
			removeAutoSnapshot(context.WithoutCancel(ctx), v.s, name)
			return nil, opError("fork", v.id, err)
		}
		out = append(out, child)
	}
	return out, nil
}

// removeAutoSnapshot removes a snapshot Fork made once no VM uses it.
func removeAutoSnapshot(ctx context.Context, s settings, name string) {
	st, err := openStore(ctx, s)
	if err != nil {
		return
	}
	defer st.Close()
	row, err := st.GetSnapshot(ctx, name)
	if err != nil {
		return
	}
	var rec snapshotRecord
	if json.Unmarshal(row.Meta, &rec) != nil || !rec.Auto {
		return
	}
	removeSnapshot(ctx, s, st, name) // refused while children remain
}

// applyEnv gives a VM resumed from a snapshot its own env: the guest
// still has the snapshot's (had); want is the VM's (VMConfig.Env).
func (v *VM) applyEnv(ctx context.Context, had, want map[string]string) error {
	set := map[string]string{}
	for k, val := range want {
		if old, ok := had[k]; !ok || old != val {
			set[k] = val
		}
	}
	var unset []string
	for k := range had {
		if _, ok := want[k]; !ok {
			unset = append(unset, k)
		}
	}
	if len(set) == 0 && len(unset) == 0 {
		return nil
	}
	c, err := v.conn(ctx)
	if err != nil {
		return err
	}
	if len(set) > 0 {
		if _, err := c.SetEnv(ctx, set); err != nil {
			return err
		}
	}
	if len(unset) > 0 {
		if _, err := c.UnsetEnv(ctx, unset...); err != nil {
			return err
		}
	}
	return nil
}

// setGuestClock sets the guest's clock to the host's.
func (v *VM) setGuestClock(ctx context.Context) error {
	c, err := guest.DialControl(ctx, v.paths.agentSocket())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Identity(ctx, guest.Identity{Time: time.Now()})
}
