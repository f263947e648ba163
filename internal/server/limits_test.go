package server_test

import (
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// TestLimitsRoutesBadRequests: the limits and metrics routes answer bad
// input and missing VMs like the others, without a VM booting.
func TestLimitsRoutesBadRequests(t *testing.T) {
	ts := startServer(t, server.Config{Home: t.TempDir()})
	ctx := testContext(t, 30*time.Second)
	json := []string{"Content-Type", "application/json"}
	for _, tt := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"limits of a missing VM", "PUT", "/v1/vms/nope/limits", `{"cpu":0.5}`, 404, api.CodeNotFound},
		{"limits without a body", "PUT", "/v1/vms/nope/limits", nil, 400, api.CodeInvalid},
		{"limits of a wrong type", "PUT", "/v1/vms/nope/limits", `{"cpu":"half"}`, 400, api.CodeInvalid},
		{"limits unknown field", "PUT", "/v1/vms/nope/limits", `{"cpus":1}`, 400, api.CodeInvalid},
		{"metrics of a missing VM", "GET", "/v1/vms/nope/metrics", nil, 404, api.CodeNotFound},
		{"create with a bad limit", "POST", "/v1/vms", `{"limits":{"cpu":-1}}`, 400, api.CodeInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.body != nil {
				hdr = json
			}
			r := ts.do(t, ctx, tt.method, tt.path, tt.body, hdr...)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			conforms(t, "ErrorBody", r.body)
			if e := r.errorBody(t); e.Code != tt.code {
				t.Errorf("error %+v, want code %q", e, tt.code)
			}
		})
	}
}
