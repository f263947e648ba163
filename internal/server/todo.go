package server

import (
	"net/http"

	"github.com/smolvm/smolvm/internal/api"
)

func notYet(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, &apiError{code: api.CodeInternal, msg: r.URL.Path + ": not implemented yet"})
}

func (s *Server) execWS(w http.ResponseWriter, r *http.Request)     { notYet(w, r) }
func (s *Server) shellWS(w http.ResponseWriter, r *http.Request)    { notYet(w, r) }
func (s *Server) putFiles(w http.ResponseWriter, r *http.Request)   { notYet(w, r) }
func (s *Server) getFiles(w http.ResponseWriter, r *http.Request)   { notYet(w, r) }
func (s *Server) logs(w http.ResponseWriter, r *http.Request)       { notYet(w, r) }
func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) { notYet(w, r) }
func (s *Server) openAPI(w http.ResponseWriter, r *http.Request)    { notYet(w, r) }
