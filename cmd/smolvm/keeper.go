package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/keeper"
)

// keeperDuties are what a VM's keeper does while the VM runs. A duty
// (see keeper.Duty) runs until its context ends; an error restarts it.
func keeperDuties() map[string]keeper.Duty {
	return map[string]keeper.Duty{
		"ttl":   ttlDuty,
		"dns":   dnsDuty,   // the TAP VM's resolver (dnsduty.go, internal/egress)
		"proxy": proxyDuty, // the user-mode VM's egress proxy (proxyduty.go)
	}
}

// newKeeperCmd is the hidden `smolvm keeper --dir VMDIR`, started by the
// SDK right after a VM's QEMU is up (see internal/keeper). It is no
// command for people: it says so and does nothing without its flags.
func newKeeperCmd(g *globalOptions) *cobra.Command {
	var o struct {
		dir, name string
		pid       int
		start     uint64
	}
	cmd := &cobra.Command{
		Use:          keeper.Command + " --dir VMDIR",
		Short:        "Keep a running VM's duties (started by smolvm itself)",
		Hidden:       true,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.dir == "" || o.pid <= 0 || o.name == "" {
				return usagef("smolvm starts its keepers itself (with --dir, --vm-pid, --vm-start and --vm-name)")
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo})).
				With("keeper", filepath.Base(o.dir))
			err := keeper.Run(cmd.Context(), keeper.Config{
				Dir: o.dir, QEMU: hypervisor.Process{PID: o.pid, Start: o.start}, Name: o.name,
				Duties: keeperDuties(), Logger: log,
			})
			if errors.Is(err, keeper.ErrRunning) {
				return nil // raced with another start of it: that one keeps the VM
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.dir, "dir", "", "the VM's directory")
	fs.IntVar(&o.pid, "vm-pid", 0, "the VM process")
	fs.Uint64Var(&o.start, "vm-start", 0, "its start time (clock ticks since boot)")
	fs.StringVar(&o.name, "vm-name", "", "its name (guest=...)")
	return cmd
}

// openKept opens the VM a duty keeps.
func openKept(ctx context.Context, kv keeper.VM) (*smolvm.VM, error) {
	return smolvm.FromID(ctx, kv.ID, smolvm.WithHome(kv.Home), smolvm.WithLogger(kv.Log))
}

// ttlDuty ends the VM when its lifetime is over (VMConfig.ExpiresAt), as
// its OnExpire says. It reads the lifetime again when told (smolvm ttl)
// and at least every minute, on the host's wall clock: the guest has no
// say in it.
func ttlDuty(ctx context.Context, kv keeper.VM) error {
	for {
		vm, err := openKept(ctx, kv) // FromID itself ends a VM whose lifetime is over
		if errors.Is(err, smolvm.ErrNotFound) {
			return nil // deleted
		}
		if err != nil {
			return err
		}
		at := vm.Info().Config.ExpiresAt
		vm.Close()
		var due <-chan time.Time
		t := time.NewTimer(time.Minute)
		if !at.IsZero() {
			t.Reset(min(max(time.Until(at), 0), time.Minute))
			due = t.C
		}
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-kv.Changed():
			t.Stop()
			continue
		case <-due:
		}
		if at.IsZero() || time.Now().Before(at) {
			continue
		}
		vm, err = openKept(ctx, kv)
		if errors.Is(err, smolvm.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		// Not cut short when the VM's QEMU exits half-way (which the
		// stop or delete itself causes, ending ctx): a delete must finish.
		end, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		_, err = vm.EnforceTTL(end)
		cancel()
		vm.Close()
		if err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			return err
		}
	}
}

// keeperPath is the keeper binary the CLI hands the SDK: this program,
// unless it is a test binary (which is no smolvm CLI; the SDK then finds
// one as it does for any program).
func keeperPath(exe string) string {
	if exe == "" || strings.HasSuffix(exe, ".test") {
		return os.Getenv(smolvm.KeeperEnv)
	}
	return exe
}
