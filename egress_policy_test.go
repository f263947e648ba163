package smolvm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/smolvm/smolvm"
)

func TestEgressPolicyValidate(t *testing.T) {
	for _, ok := range []smolvm.EgressPolicy{
		{},
		{NoEgress: true},
		{NoEgress: true, DenyCIDRs: []string{"10.0.0.0/8"}},
		{AllowDomains: []string{"ok.test", "*.example.org", "Caps.Test."}, AllowCIDRs: []string{"203.0.113.0/24", "198.51.100.7"}, DenyCIDRs: []string{"203.0.113.9/32"}},
	} {
		if err := ok.Validate(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, tt := range []struct {
		p     smolvm.EgressPolicy
		field string
	}{
		{smolvm.EgressPolicy{NoEgress: true, AllowCIDRs: []string{"203.0.113.0/24"}}, "egress policy"},
		{smolvm.EgressPolicy{AllowCIDRs: []string{"fd00::/8"}}, "allow-cidr"},
		{smolvm.EgressPolicy{DenyCIDRs: []string{"10.1.2.3/8"}}, "deny-cidr"},
		{smolvm.EgressPolicy{AllowDomains: []string{"*"}}, "allow-domain"},
		{smolvm.EgressPolicy{AllowDomains: []string{"a b"}}, "allow-domain"},
	} {
		err := tt.p.Validate()
		var ve *smolvm.ValidationError
		if !errors.Is(err, smolvm.ErrInvalid) || !errors.As(err, &ve) || ve.Field != tt.field {
			t.Errorf("%+v: %v, want a ValidationError of %s", tt.p, err, tt.field)
		}
	}
	cfg := smolvm.VMConfig{NoEgress: true, Egress: smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}}}
	if err := cfg.Validate(); !errors.Is(err, smolvm.ErrInvalid) {
		t.Errorf("NoEgress with an allowed domain: %v", err)
	}
	if err := (smolvm.VMConfig{DNSUpstream: "dns.example"}).Validate(); !errors.Is(err, smolvm.ErrInvalid) {
		t.Errorf("a DNS upstream by name: %v", err)
	}
}

func TestEgressStatus(t *testing.T) {
	for _, tt := range []struct {
		cfg   smolvm.VMConfig
		mode  string
		proxy string
		want  string
	}{
		{smolvm.VMConfig{}, smolvm.NetworkTAP, "", "public addresses"},
		{smolvm.VMConfig{NoEgress: true}, smolvm.NetworkTAP, "", "no egress"},
		{smolvm.VMConfig{Egress: smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}, DenyCIDRs: []string{"203.0.113.9/32"}}}, smolvm.NetworkTAP, "", "only domains ok.test; never 203.0.113.9/32"},
		{smolvm.VMConfig{Egress: smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}}}, smolvm.NetworkUser, "10.0.2.100:3128", "only domains ok.test; through the HTTP proxy 10.0.2.100:3128 only"},
		{smolvm.VMConfig{Egress: smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}}}, smolvm.NetworkUser, "", "no egress: this user-mode VM has no egress proxy"},
		{smolvm.VMConfig{NoEgress: true}, smolvm.NetworkUser, "10.0.2.100:3128", "no egress"},
	} {
		got := smolvm.VMInfo{Config: tt.cfg, Network: smolvm.NetworkInfo{Mode: tt.mode, Proxy: tt.proxy}}.EgressStatus()
		if !strings.Contains(got.Summary, tt.want) {
			t.Errorf("%+v in %s: %q, want it to say %q", tt.cfg, tt.mode, got.Summary, tt.want)
		}
		if tt.cfg.NoEgress && !got.Policy.NoEgress {
			t.Errorf("VMConfig.NoEgress not in the policy: %+v", got.Policy)
		}
	}
}
