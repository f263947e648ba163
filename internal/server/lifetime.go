package server

import (
	"context"
	"net/http"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// lifetime puts a create request's lifetime and labels into cfg.
func lifetime(cfg *smolvm.VMConfig, req api.CreateVM) error {
	ttl, err := seconds("ttl_seconds", req.TTLSeconds)
	if err != nil {
		return err
	}
	cfg.TTL, cfg.OnExpire, cfg.Labels = ttl, req.OnExpire, req.Labels
	return nil
}

// snapshotLifetime is the same for a VM made from a snapshot.
func snapshotLifetime(req api.CreateVM) []smolvm.Option {
	var opts []smolvm.Option
	if req.TTLSeconds != 0 || req.OnExpire != "" {
		// Bad values are the SDK's to refuse, with its message.
		opts = append(opts, smolvm.WithTTL(time.Duration(req.TTLSeconds*float64(time.Second)), req.OnExpire))
	}
	if req.Labels != nil {
		opts = append(opts, smolvm.WithLabels(req.Labels))
	}
	return opts
}

func (s *Server) setTTL(w http.ResponseWriter, r *http.Request) {
	var req api.SetTTL
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	ttl, err := seconds("ttl_seconds", req.TTLSeconds)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.SetTTL(r.Context(), ttl, req.OnExpire); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}

// LifetimeTick is how often a serving smolvm looks at its VMs' lifetimes.
const LifetimeTick = 10 * time.Second

// KeepLifetimes enforces the lifetimes of the state directory's VMs every
// tick until ctx ends: a look (smolvm.List) ends each VM whose lifetime
// is over and restarts a running VM's missing keeper. Running VMs have
// keepers that do it on time; this covers VMs no keeper keeps (stopped
// ones with on-expire delete, a keeper killed meanwhile).
func (s *Server) KeepLifetimes(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := smolvm.List(ctx, s.sdk()...); err != nil && ctx.Err() == nil {
			s.log.Warn("lifetimes", "err", err)
		}
	}
}

// start starts vm, handing it secrets (if any) through a handle of its
// own: the cached handle's options are fixed, and secrets stay only as
// long as this request.
func (s *Server) start(ctx context.Context, vm *smolvm.VM, secrets map[string]string) error {
	if len(secrets) == 0 {
		return vm.Start(ctx)
	}
	if err := smolvm.ValidateEnv(secrets); err != nil {
		return err
	}
	v, err := smolvm.FromID(ctx, vm.ID(), s.sdk(smolvm.WithStartSecrets(secrets))...)
	if err != nil {
		return err
	}
	defer v.Close()
	if err := v.Start(ctx); err != nil {
		return err
	}
	return vm.Refresh(ctx)
}
