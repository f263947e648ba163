package server

import "net/http"

// Route is one registered route. The same table registers the mux and is
// checked against openapi.json by the tests, so the two cannot drift.
type Route struct {
	Method  string // GET, POST, ...
	Pattern string // an http.ServeMux path pattern, such as /v1/vms/{id}
	handler http.Handler
}

// Routes lists every route the server registers, /mcp aside (it is
// mounted only when Config.MCP is set).
func (s *Server) Routes() []Route {
	rs := s.routes()
	for i := range rs {
		rs[i].handler = nil
	}
	return rs
}

func (s *Server) routes() []Route {
	h := func(method, pattern string, fn http.HandlerFunc) Route {
		return Route{Method: method, Pattern: pattern, handler: fn}
	}
	return []Route{
		h("GET", "/openapi.json", s.openAPI),
		h("GET", "/v1/health", s.health),
		h("GET", "/v1/doctor", s.doctor),

		h("POST", "/v1/vms", s.createVM),
		h("GET", "/v1/vms", s.listVMs),
		h("GET", "/v1/vms/{id}", s.getVM),
		h("DELETE", "/v1/vms/{id}", s.deleteVM),
		h("POST", "/v1/vms/{id}/start", s.startVM),
		h("POST", "/v1/vms/{id}/stop", s.stopVM),
		h("POST", "/v1/vms/{id}/pause", s.pauseVM),
		h("POST", "/v1/vms/{id}/resume", s.resumeVM),
		h("POST", "/v1/vms/{id}/ttl", s.setTTL),

		h("POST", "/v1/vms/{id}/exec", s.exec),
		h("GET", "/v1/vms/{id}/exec/ws", s.execWS),
		h("GET", "/v1/vms/{id}/shell/ws", s.shellWS),
		h("POST", "/v1/vms/{id}/processes", s.startProcess),
		h("GET", "/v1/vms/{id}/processes", s.listProcesses),
		h("GET", "/v1/vms/{id}/processes/{pid}", s.getProcess),
		h("POST", "/v1/vms/{id}/processes/{pid}/signal", s.signalProcess),
		h("POST", "/v1/vms/{id}/processes/{pid}/wait", s.waitProcess),
		h("POST", "/v1/vms/{id}/processes/{pid}/stdin", s.processStdin),
		h("GET", "/v1/vms/{id}/processes/{pid}/attach", s.attachProcess),

		h("GET", "/v1/vms/{id}/env", s.getEnv),
		h("PATCH", "/v1/vms/{id}/env", s.patchEnv),
		h("GET", "/v1/vms/{id}/policy", s.getPolicy),
		h("PUT", "/v1/vms/{id}/policy", s.putPolicy),
		h("PUT", "/v1/vms/{id}/files", s.putFiles),
		h("GET", "/v1/vms/{id}/files", s.getFiles),
		h("DELETE", "/v1/vms/{id}/files", s.deleteFiles),
		h("GET", "/v1/vms/{id}/files/stat", s.statFile),
		h("GET", "/v1/vms/{id}/files/list", s.listFiles),
		h("POST", "/v1/vms/{id}/files/mkdir", s.mkdirFile),
		h("POST", "/v1/vms/{id}/files/rename", s.renameFile),
		h("GET", "/v1/vms/{id}/files/watch", s.watchFiles),
		h("GET", "/v1/vms/{id}/ports", s.listPorts),
		h("POST", "/v1/vms/{id}/ports", s.exposePort),
		h("DELETE", "/v1/vms/{id}/ports", s.closePort),
		h("GET", "/v1/vms/{id}/logs", s.logs),
		h("PUT", "/v1/vms/{id}/limits", s.putLimits),
		h("GET", "/v1/vms/{id}/metrics", s.metrics),

		h("POST", "/v1/vms/{id}/snapshots", s.createSnapshot),
		h("POST", "/v1/vms/{id}/fork", s.fork),
		h("GET", "/v1/snapshots", s.listSnapshots),
		h("GET", "/v1/snapshots/{name}", s.getSnapshot),
		h("DELETE", "/v1/snapshots/{name}", s.deleteSnapshot),
		h("DELETE", "/v1/disks/{id}", s.deleteKeptDisk),

		h("POST", "/v1/images", s.buildImage),
		h("GET", "/v1/images", s.listImages),
		h("GET", "/v1/images/{name}", s.getImage),
		h("DELETE", "/v1/images/{name}", s.deleteImage),
	}
}
