package server

import (
	"net/http"

	"github.com/smolvm/smolvm"
)

// putLimits replaces a VM's limits (smolvm.VM.SetLimits) and answers
// with them.
func (s *Server) putLimits(w http.ResponseWriter, r *http.Request) {
	var req smolvm.Limits
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, r, err)
		return
	}
	s.withVM(w, r, func(vm *smolvm.VM) error {
		if err := vm.SetLimits(r.Context(), req); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, req)
		return nil
	})
}

// metrics samples a running VM (smolvm.VM.Metrics). The server's handle
// is cached, so a client polling it gets CPU usage over its interval.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.withVM(w, r, func(vm *smolvm.VM) error {
		m, err := vm.Metrics(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, m)
		return nil
	})
}
