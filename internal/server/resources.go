package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
)

func (s *Server) getEnv(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		env, err := vm.Env(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.Env{Env: nonNil(env)})
		return nil
	})
}

func (s *Server) patchEnv(w http.ResponseWriter, r *http.Request) {
	var req api.EnvPatch
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	// Check every name before changing anything.
	if err := smolvm.ValidateEnv(req.Set); err != nil {
		writeError(w, r, err)
		return
	}
	for _, k := range req.Unset {
		if err := smolvm.ValidateEnvName(k); err != nil {
			writeError(w, r, err)
			return
		}
		if _, ok := req.Set[k]; ok {
			writeError(w, r, invalid("unset", "%q is both set and unset: give it in one of them", k))
			return
		}
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		env, err := vm.Env(r.Context())
		if len(req.Set) > 0 {
			if env, err = vm.SetEnv(r.Context(), req.Set); err != nil {
				return err
			}
		}
		if len(req.Unset) > 0 {
			if env, err = vm.UnsetEnv(r.Context(), req.Unset...); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.Env{Env: nonNil(env)})
		return nil
	})
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func (s *Server) listPorts(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		fwds, err := vm.Forwards(r.Context())
		if err != nil {
			return err
		}
		if fwds == nil {
			fwds = []smolvm.PortForward{}
		}
		writeJSON(w, http.StatusOK, api.PortList{Ports: fwds})
		return nil
	})
}

func (s *Server) exposePort(w http.ResponseWriter, r *http.Request) {
	var req api.Expose
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		var opts []smolvm.ExposeOption
		if req.HostAddr != "" {
			opts = append(opts, smolvm.OnHostAddr(req.HostAddr))
		}
		fwd, err := vm.Expose(r.Context(), req.GuestPort, req.HostPort, opts...)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, fwd)
		return nil
	})
}

func (s *Server) closePort(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	port, err := strconv.Atoi(q.Get("host_port"))
	if err != nil || port <= 0 || port > 65535 {
		writeError(w, r, invalid("host_port", "host_port=%q: give the forward's host port, 1-65535", q.Get("host_port")))
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.Unexpose(r.Context(), q.Get("host_addr"), port); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSnapshot
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Name == "" {
		writeError(w, r, invalid("name", "name is empty: name the snapshot"))
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		var opts []smolvm.SnapshotOption
		if req.DiskOnly {
			opts = append(opts, smolvm.DiskOnly())
		}
		// A capture runs to its end (or is undone by the SDK) whatever
		// the client does.
		info, err := vm.Snapshot(context.WithoutCancel(r.Context()), req.Name, opts...)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, info)
		return nil
	})
}

// MaxFork is the most children one fork request makes.
const MaxFork = 64

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	var req api.Fork
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 0 || req.Count > MaxFork {
		writeError(w, r, invalid("count", "count %d: want 1 to %d children", req.Count, MaxFork))
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		kids, err := vm.Fork(r.Context(), req.Count)
		if err != nil {
			return err
		}
		out := api.VMList{VMs: make([]smolvm.VMInfo, 0, len(kids))}
		for _, k := range kids {
			out.VMs = append(out.VMs, k.Info())
			s.remember(k)
		}
		writeJSON(w, http.StatusCreated, out)
		return nil
	})
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, err := smolvm.ListSnapshots(r.Context(), s.sdk()...)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if snaps == nil {
		snaps = []smolvm.SnapshotInfo{}
	}
	writeJSON(w, http.StatusOK, api.SnapshotList{Snapshots: snaps})
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	info, err := smolvm.GetSnapshot(r.Context(), r.PathValue("name"), s.sdk()...)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := smolvm.RemoveSnapshot(r.Context(), r.PathValue("name"), s.sdk()...); err != nil {
		writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// deleteKeptDisk removes the disk a deleted VM kept (RetainDiskOnDelete).
func (s *Server) deleteKeptDisk(w http.ResponseWriter, r *http.Request) {
	if err := smolvm.RemoveKeptDisk(r.Context(), r.PathValue("id"), s.sdk()...); err != nil {
		writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := s.builder().List()
	if err != nil {
		writeError(w, r, err)
		return
	}
	out := api.ImageList{Images: make([]image.Image, 0, len(imgs))}
	for _, img := range imgs {
		out.Images = append(out.Images, *img)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := s.builder().Get(r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, img)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	if err := s.builder().Remove(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
