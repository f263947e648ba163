package server_test

import (
	"context"
	"testing"

	"github.com/smolvm/smolvm"
)

// testPolicy reads and replaces a running VM's egress policy through the
// API, and checks that bad policies are refused naming the field.
func testPolicy(t *testing.T, ctx context.Context, ts *testServer, id string) {
	var st smolvm.EgressStatus
	r := ts.do(t, ctx, "GET", "/v1/vms/"+id+"/policy", nil)
	decodeJSON(t, r, 200, &st)
	conforms(t, "EgressStatus", r.body)
	if st.Policy.Restricted() || st.Summary == "" {
		t.Errorf("default policy: %+v", st)
	}
	var info smolvm.VMInfo
	r = ts.do(t, ctx, "PUT", "/v1/vms/"+id+"/policy", smolvm.EgressPolicy{AllowDomains: []string{"OK.test."}, DenyCIDRs: []string{"203.0.113.9"}})
	decodeJSON(t, r, 200, &info)
	conforms(t, "VMInfo", r.body)
	if p := info.Config.Egress; len(p.AllowDomains) != 1 || p.AllowDomains[0] != "ok.test" || p.DenyCIDRs[0] != "203.0.113.9/32" {
		t.Errorf("stored policy %+v, want it normalized", p)
	}
	decodeJSON(t, ts.do(t, ctx, "GET", "/v1/vms/"+id+"/policy", nil), 200, &st)
	if len(st.Policy.AllowDomains) != 1 {
		t.Errorf("policy after PUT: %+v", st)
	}
	for body, field := range map[string]string{
		`{"allow_cidrs": ["fd00::/8"]}`:                     "allow_cidrs",
		`{"allow_domains": ["a..b"]}`:                       "allow_domains",
		`{"no_egress": true, "allow_domains": ["ok.test"]}`: "no_egress",
		`{"deny_cidrs": ["10.0.0.1/8"]}`:                    "deny_cidrs",
	} {
		r := ts.do(t, ctx, "PUT", "/v1/vms/"+id+"/policy", body)
		if r.status != 400 || r.errorBody(t).Field != field {
			t.Errorf("PUT %s: %d %s, want 400 naming %s", body, r.status, r.body, field)
		}
	}
	if r := ts.do(t, ctx, "PUT", "/v1/vms/"+id+"/policy", `{"allow": ["x"]}`); r.status != 400 {
		t.Errorf("unknown field: %d %s", r.status, r.body)
	}
	var cleared smolvm.VMInfo // fresh: an empty policy is omitted from the JSON
	decodeJSON(t, ts.do(t, ctx, "PUT", "/v1/vms/"+id+"/policy", smolvm.EgressPolicy{}), 200, &cleared)
	if cleared.Config.Egress.Restricted() {
		t.Errorf("policy after clearing: %+v", cleared.Config.Egress)
	}
}
