package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm"
)

// TestPolicyFlagErrors: bad policies are refused before anything is made,
// with errors that say how to fix them; none of these boots a VM.
func TestPolicyFlagErrors(t *testing.T) {
	home := t.TempDir()
	for _, tt := range []struct {
		args []string
		kind string
		says string
	}{
		{[]string{"create", "--allow-cidr", "fd00::/8"}, "invalid", "IPv6 is unsupported"},
		{[]string{"create", "--allow-cidr", "10.1.2.3/8"}, "invalid", "did you mean 10.0.0.0/8"},
		{[]string{"create", "--deny-cidr", "nonsense"}, "invalid", "IPv4 network"},
		{[]string{"create", "--allow-domain", "a.*.test"}, "invalid", "*.example.org"},
		{[]string{"create", "--no-egress", "--allow-domain", "ok.test"}, "invalid", "not both"},
		{[]string{"create", "--dns-upstream", "dns.example"}, "invalid", "ADDR:PORT"},
		{[]string{"create", "--from-snapshot", "s", "--allow-domain", "ok.test"}, "invalid", ""},
		{[]string{"policy", "set", "x"}, "invalid", "--clear"},
		{[]string{"policy", "set", "x", "--clear", "--no-egress"}, "invalid", ""},
		{[]string{"policy", "set", "nosuch", "--no-egress"}, "not_found", ""},
		{[]string{"policy", "show", "nosuch"}, "not_found", ""},
		{[]string{"policy", "show"}, "invalid", ""},
	} {
		stdout, _, code := runCLI(t, append([]string{"--json", "--home", home}, tt.args...)...)
		var got struct{ Error, Kind string }
		if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 1 || got.Kind != tt.kind || !strings.Contains(got.Error, tt.says) {
			t.Errorf("%q: exit %d, %s; want kind %s saying %q", tt.args, code, stdout, tt.kind, tt.says)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "vms")); len(ents) != 0 {
		t.Errorf("bad input left VM directories: %v", ents)
	}
}

// checkPolicyCLI sets, adds to, shows and clears the policy of the
// running VM id through the CLI.
func checkPolicyCLI(t *testing.T, c cli, id string) {
	t.Helper()
	var info smolvm.VMInfo
	c.json(&info, "policy", "set", id, "--allow-domain", "OK.test", "--deny-cidr", "203.0.113.9")
	c.ok("policy", "set", id, "--add", "--allow-cidr", "198.51.100.0/24")
	var st smolvm.EgressStatus
	c.json(&st, "policy", "show", id)
	if p := st.Policy; len(p.AllowDomains) != 1 || p.AllowDomains[0] != "ok.test" || len(p.AllowCIDRs) != 1 || p.DenyCIDRs[0] != "203.0.113.9/32" {
		t.Errorf("policy show: %+v", st)
	}
	if out := c.ok("info", id); !strings.Contains(out, "only domains ok.test") {
		t.Errorf("info does not show the policy:\n%s", out)
	}
	if r := c.run("policy", "set", id, "--allow-cidr", "fd00::/8"); r.code == 0 || !strings.Contains(r.stderr, "IPv6") {
		t.Errorf("an IPv6 CIDR: exit %d: %s", r.code, r.stderr)
	}
	c.ok("policy", "set", id, "--clear")
	if out := c.ok("policy", "show", id); !strings.Contains(out, "public addresses") && !strings.Contains(out, "user-mode") {
		t.Errorf("after --clear: %q", out)
	}
}
