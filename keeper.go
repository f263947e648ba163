package smolvm

import (
	"context"
	"os"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/agentbin"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/keeper"
)

// KeeperEnv names the environment variable that picks the keeper binary
// (see WithKeeper).
const KeeperEnv = "SMOLVM_KEEPER"

// WithKeeper sets the smolvm CLI binary that runs as a running VM's
// keeper (smolvm keeper): the host process that enforces its lifetime and
// carries its other duties after the caller exited. Default: $SMOLVM_KEEPER,
// else the smolvm CLI built once per smolvm version from this program's
// own smolvm module source, kept beside the built agent.
func WithKeeper(path string) Option { return func(s *settings) { s.keeper = path } }

// keeperExe is the binary to start as the VM's keeper.
func (v *VM) keeperExe(ctx context.Context) (string, error) {
	if v.s.keeper != "" {
		return v.s.keeper, nil
	}
	if p := os.Getenv(KeeperEnv); p != "" {
		return p, nil
	}
	// Once per handle: a start asks twice (its egress proxy's relay, its
	// keeper), and finding a built one hashes the module's source.
	v.mu.Lock()
	found := v.keeper
	v.mu.Unlock()
	if found != "" {
		return found, nil
	}
	p, err := agentbin.ProvisionKeeper(ctx, agentbin.Options{
		CacheDir: agentbin.DefaultCacheDir(v.s.home), Progress: v.s.progress, Logger: v.s.logger,
	})
	if err == nil {
		v.mu.Lock()
		v.keeper = p
		v.mu.Unlock()
	}
	return p, err
}

// ensureKeeper starts the VM's keeper if the VM runs and none keeps it:
// after a start, and at every look (FromID, List), so a keeper killed by
// -9 is back at the next smolvm command, or within the serve's tick.
func (v *VM) ensureKeeper(ctx context.Context) error {
	info := v.Info()
	if info.State != StateRunning && info.State != StatePaused {
		return nil
	}
	if keeper.Running(v.paths.dir) {
		return nil
	}
	proc := v.process()
	if !hypervisor.Alive(proc, info.Process) {
		return nil
	}
	exe, err := v.keeperExe(ctx)
	if err != nil {
		return err
	}
	if err := keeper.Spawn(ctx, keeper.SpawnOptions{Exe: exe, Dir: v.paths.dir, QEMU: proc, Name: info.Process}); err != nil {
		return err
	}
	v.log().Debug("keeper started", "exe", exe)
	return nil
}

// lookedAt is what every look at a VM (FromID, List) does after
// reconcile: restart a missing keeper; a failure is only logged, the look
// itself succeeds.
func (v *VM) lookedAt(ctx context.Context) {
	if err := v.ensureKeeper(ctx); err != nil {
		v.log().Warn("keeper", "err", err)
	}
}

// stopKeeper ends the VM's keeper (not when this process is it: a keeper
// stopping its own VM leaves once QEMU is gone).
func (v *VM) stopKeeper() {
	if err := keeper.Stop(context.Background(), v.paths.dir); err != nil {
		v.log().Warn("stop keeper", "err", err)
	}
}

// keeperLeftovers are keeper processes of this state directory's VM
// directories that keep no running VM.
func keeperLeftovers(vmsDir string, known map[string]VMInfo) []Leftover {
	var out []Leftover
	for _, o := range keeper.Orphans(func(dir string) bool {
		vm, ok := known[strings.TrimPrefix(dir, vmsDir)]
		return ok && (vm.State == StateRunning || vm.State == StatePaused)
	}) {
		if !strings.HasPrefix(o.Dir, vmsDir) {
			continue // another state directory's
		}
		out = append(out, Leftover{Kind: "keeper", Name: strconv.Itoa(o.PID), vm: o.Dir,
			Detail: "keeper of " + o.Dir + ", which keeps no running VM"})
	}
	return out
}

func removeKeeperLeftover(l Leftover) error {
	pid, err := strconv.Atoi(l.Name)
	if err != nil {
		return err
	}
	return keeper.KillOrphan(keeper.Orphan{PID: pid, Dir: l.vm})
}

// checkKeeper says which binary would keep running VMs. Optional: without
// one VMs run, but only a look at them enforces their lifetimes.
func checkKeeper(s settings) Check {
	c := Check{Name: "keeper", Optional: true,
		Fix: "set SMOLVM_KEEPER to the smolvm CLI (./scripts/build.sh makes bin/smolvm), or install Go so smolvm builds one"}
	path := s.keeper
	if path == "" {
		path = os.Getenv(KeeperEnv)
	}
	if path == "" {
		what, err := agentbin.Describe(agentbin.DefaultCacheDir(s.home), "")
		if err != nil {
			c.Detail = "none configured, and none can be built: " + err.Error() + "; lifetimes are then enforced only when smolvm looks at a VM"
			return c
		}
		c.OK, c.Detail, c.Fix = true, "none configured: the smolvm CLI built from the same source as the agent ("+what+")", ""
		return c
	}
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		c.Detail = path + " is not an executable file"
		return c
	}
	c.OK, c.Detail, c.Fix = true, path+" (smolvm keeper) keeps each running VM's lifetime", ""
	return c
}
