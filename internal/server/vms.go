package server

import (
	"context"
	"errors"
	"math"
	"net/http"
	"os"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{Version: s.cfg.Version, API: api.Version, Home: s.cfg.Home, PID: os.Getpid()})
}

func (s *Server) doctor(w http.ResponseWriter, r *http.Request) {
	checks := smolvm.Doctor(r.Context(), s.sdk()...)
	if checks == nil {
		checks = []smolvm.Check{}
	}
	writeJSON(w, http.StatusOK, api.Checks{Checks: checks})
}

// seconds turns a wire duration into a time.Duration; negative, NaN and
// absurd values are invalid.
func seconds(field string, v float64) (time.Duration, error) {
	if math.IsNaN(v) || v < 0 || v > float64(math.MaxInt64/int64(time.Second)) {
		return 0, invalid(field, "%s %v: want a non-negative number of seconds (0 = the default)", field, v)
	}
	return time.Duration(v * float64(time.Second)), nil
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVM
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	vm, err := s.create(r.Context(), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	info := vm.Info()
	s.remember(vm)
	writeJSON(w, http.StatusCreated, info)
}

// create makes the VM req asks for. A VM that fails to start is deleted
// again, as smolvm.Start does, so a failed request leaves nothing.
func (s *Server) create(ctx context.Context, req api.CreateVM) (*smolvm.VM, error) {
	boot, err := seconds("boot_timeout_seconds", req.BootTimeoutSeconds)
	if err != nil {
		return nil, err
	}
	var opts []smolvm.Option
	switch req.Network {
	case "":
	case smolvm.NetworkAuto, smolvm.NetworkTAP, smolvm.NetworkUser:
		opts = append(opts, smolvm.WithNetwork(req.Network))
	default:
		return nil, invalid("network", "network %q: use auto, tap or user", req.Network)
	}
	if req.Cold {
		opts = append(opts, smolvm.WithColdBoot())
	}
	if req.FromSnapshot != "" {
		if req.VCPUs != 0 || req.MemoryMiB != 0 || req.DiskMiB != 0 || req.Image != "" || req.KernelPath != "" ||
			req.RootfsPath != "" || req.InitrdPath != "" || req.BootArgs != "" || len(req.Mounts) > 0 || req.ReuseDisk || req.Cold {
			return nil, invalid("from_snapshot", "a VM from a snapshot has the snapshot's machine: leave vcpus, memory_mib, disk_mib, image, kernel/rootfs/initrd paths, boot_args, mounts, reuse_disk and cold unset")
		}
		if req.ID != "" {
			opts = append(opts, smolvm.WithID(req.ID))
		}
		if req.Env != nil {
			opts = append(opts, smolvm.WithEnv(req.Env))
		}
		if boot != 0 {
			opts = append(opts, smolvm.WithBootTimeout(boot))
		}
		if !req.Limits.IsZero() {
			opts = append(opts, smolvm.WithLimits(req.Limits))
		}
		opts = append(opts, snapshotLifetime(req)...)
		if len(req.Secrets) > 0 {
			opts = append(opts, smolvm.WithStartSecrets(req.Secrets))
		}
		return smolvm.FromSnapshot(ctx, req.FromSnapshot, s.sdk(opts...)...)
	}
	cfg := smolvm.VMConfig{
		ID: req.ID, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB,
		Image: req.Image, KernelPath: req.KernelPath, RootfsPath: req.RootfsPath, InitrdPath: req.InitrdPath,
		BootArgs: req.BootArgs, Env: req.Env, Mounts: req.Mounts, NoEgress: req.NoEgress, Egress: req.Egress, DNSUpstream: req.DNSUpstream,
		RetainDiskOnDelete: req.RetainDiskOnDelete, ReuseDisk: req.ReuseDisk, BootTimeout: boot,
		Limits: req.Limits,
	}
	if err := lifetime(&cfg, req); err != nil {
		return nil, err
	}
	if len(req.Secrets) > 0 {
		if !req.Start {
			return nil, invalid("secrets", "secrets are handed over at start: give start: true, or give them to POST /v1/vms/{id}/start")
		}
		opts = append(opts, smolvm.WithStartSecrets(req.Secrets))
	}
	vm, err := smolvm.NewFromConfig(ctx, cfg, s.sdk(opts...)...)
	if err != nil {
		return nil, err
	}
	if req.Start {
		if err := vm.Start(ctx); err != nil {
			return nil, errors.Join(err, vm.Delete(context.WithoutCancel(ctx)))
		}
	}
	return vm, nil
}

var vmStates = map[smolvm.VMState]bool{
	smolvm.StateCreated: true, smolvm.StateRunning: true, smolvm.StatePaused: true,
	smolvm.StateStopped: true, smolvm.StateError: true, smolvm.StateHibernated: true,
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, img := smolvm.VMState(q.Get("state")), q.Get("image")
	if state != "" && !vmStates[state] {
		writeError(w, r, invalid("state", "state %q: use created, running, paused, stopped, error or hibernated", state))
		return
	}
	infos, err := smolvm.List(r.Context(), s.sdk(smolvm.WithLabelFilter(q["label"]...))...)
	if err != nil {
		writeError(w, r, err)
		return
	}
	out := api.VMList{VMs: []smolvm.VMInfo{}}
	for _, info := range infos {
		if (state == "" || info.State == state) && (img == "" || info.Config.Image == img) {
			out.VMs = append(out.VMs, info)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// withVM runs fn on the handle of the path's VM and answers its error;
// fn writes the success response itself.
func (s *Server) withVM(w http.ResponseWriter, r *http.Request, fn func(*smolvm.VM) error) {
	vm, release, err := s.vm(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer release()
	if err := fn(vm); err != nil {
		s.dropIfGone(vm, err)
		writeError(w, r, err)
	}
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.Refresh(r.Context()); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		// A delete the client gave up on still runs to its end: half a
		// delete helps nobody.
		if err := vm.Delete(context.WithoutCancel(r.Context())); err != nil {
			return err
		}
		s.forget(vm)
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request) {
	var req api.Start
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, r, err)
		return
	}
	boot, err := seconds("boot_timeout_seconds", req.BootTimeoutSeconds)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		ctx := r.Context()
		if boot > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, boot)
			defer cancel()
		}
		if err := s.start(ctx, vm, req.Secrets); err != nil {
			if boot > 0 && errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, smolvm.ErrTimeout) {
				err = &smolvm.TimeoutError{Op: "start", VM: vm.ID(), Timeout: boot}
			}
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}

func (s *Server) stopVM(w http.ResponseWriter, r *http.Request) {
	var req api.Stop
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, r, err)
		return
	}
	timeout, err := seconds("timeout_seconds", req.TimeoutSeconds)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.Stop(context.WithoutCancel(r.Context()), timeout); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}

func (s *Server) pauseVM(w http.ResponseWriter, r *http.Request) {
	var req api.Pause
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		var opts []smolvm.PauseOption
		if req.ToDisk {
			opts = append(opts, smolvm.ToDisk())
		}
		if err := vm.Pause(r.Context(), opts...); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}

func (s *Server) resumeVM(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.Resume(r.Context()); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}
