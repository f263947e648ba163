package server

import (
	"net/http"

	"github.com/smolvm/smolvm"
)

// getPolicy answers the VM's egress policy and what it means for its
// network mode (smolvm.EgressStatus).
func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		writeJSON(w, http.StatusOK, vm.Info().EgressStatus())
		return nil
	})
}

// putPolicy replaces the VM's egress policy (smolvm.EgressPolicy); a
// running VM applies it at once. It answers the VM.
func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	var req smolvm.EgressPolicy
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.SetEgressPolicy(r.Context(), req); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm.Info())
		return nil
	})
}
