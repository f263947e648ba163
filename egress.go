package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smolvm/smolvm/internal/egress"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// EgressPolicy says where a VM may open connections to. The zero value is
// the default perimeter: any public address, but nothing in private,
// shared, link-local (cloud metadata), loopback, multicast or reserved
// ranges (RFC 1918, 100.64.0.0/10, 198.18.0.0/15, 169.254.0.0/16, ...)
// nor the networks the host is directly on (its LAN), and never the
// host's own services or other VMs. Allowances only add to
// that perimeter: once any AllowDomains or AllowCIDRs entry is given,
// everything they do not name is dropped. DenyCIDRs win over every
// allowance.
//
// Domains work by DNS: with TAP networking the guest's resolver is
// smolvm's, on its gateway, which answers only allowed names (others get
// NXDOMAIN) and lets the VM connect to the addresses it answered, for the
// record's TTL (clamped to 1 minute-1 hour). With user-mode networking a
// VM has no route out: it reaches the network only through smolvm's HTTP
// proxy (NetworkInfo.Proxy; the guest's http_proxy and https_proxy),
// which resolves names itself and enforces the same policy (see
// docs/networking.md).
type EgressPolicy struct {
	// NoEgress cuts the VM off: no connection out, no name resolves.
	// Exposed ports still reach it. Not with allowances.
	NoEgress bool `json:"no_egress,omitempty"`
	// AllowDomains are names the VM may resolve and reach: "api.example.org",
	// or "*.example.org" for every name below example.org (not
	// example.org itself: list it too).
	AllowDomains []string `json:"allow_domains,omitempty"`
	// AllowCIDRs are IPv4 networks ("203.0.113.0/24") or addresses the VM
	// may reach, private ones included.
	AllowCIDRs []string `json:"allow_cidrs,omitempty"`
	// DenyCIDRs are IPv4 networks the VM never reaches, even when allowed.
	DenyCIDRs []string `json:"deny_cidrs,omitempty"`
}

// Restricted reports whether the policy allows only what it names.
func (p EgressPolicy) Restricted() bool { return len(p.AllowDomains) > 0 || len(p.AllowCIDRs) > 0 }

// Validate checks the policy; each problem is a *ValidationError.
func (p EgressPolicy) Validate() error {
	var errs []error
	bad := func(field string, v any, err error) {
		reason := err.Error()
		if _, after, ok := strings.Cut(reason, ": "); ok && errors.Is(err, egress.ErrInvalid) {
			reason = after // the field says what it is
		}
		errs = append(errs, &ValidationError{Field: field, Value: v, Reason: reason})
	}
	if p.NoEgress && p.Restricted() {
		errs = append(errs, &ValidationError{Field: "egress policy", Value: "no-egress with allowances",
			Reason: "give either no-egress or allowances (allow-domain, allow-cidr), not both"})
	}
	for field, list := range map[string][]string{"allow-domain": p.AllowDomains, "allow-cidr": p.AllowCIDRs, "deny-cidr": p.DenyCIDRs} {
		if len(list) > egress.MaxEntries {
			errs = append(errs, &ValidationError{Field: field, Value: len(list), Reason: fmt.Sprintf("at most %d entries", egress.MaxEntries)})
		}
	}
	for _, d := range p.AllowDomains {
		if err := egress.ValidatePattern(d); err != nil {
			bad("allow-domain", fmt.Sprintf("%q", d), err)
		}
	}
	for field, list := range map[string][]string{"allow-cidr": p.AllowCIDRs, "deny-cidr": p.DenyCIDRs} {
		for _, c := range list {
			if _, err := egress.ParseCIDR(c); err != nil {
				bad(field, fmt.Sprintf("%q", c), err)
			}
		}
	}
	return errors.Join(errs...)
}

// normalized returns p with names lowercased, CIDRs canonical, and
// duplicates dropped, so what is stored and shown is what is enforced.
func (p EgressPolicy) normalized() EgressPolicy {
	out := EgressPolicy{NoEgress: p.NoEgress}
	for _, d := range p.AllowDomains {
		if n := egress.NormalizeName(d); !slices.Contains(out.AllowDomains, n) {
			out.AllowDomains = append(out.AllowDomains, n)
		}
	}
	cidrs := func(in []string) []string {
		var res []string
		for _, c := range in {
			if pr, err := egress.ParseCIDR(c); err == nil && !slices.Contains(res, pr.String()) {
				res = append(res, pr.String())
			}
		}
		return res
	}
	out.AllowCIDRs, out.DenyCIDRs = cidrs(p.AllowCIDRs), cidrs(p.DenyCIDRs)
	return out
}

// egressPolicy is the effective policy of a config: VMConfig.NoEgress
// (the older switch) counts as EgressPolicy.NoEgress.
func (c VMConfig) egressPolicy() EgressPolicy {
	p := c.Egress
	p.NoEgress = p.NoEgress || c.NoEgress
	return p
}

func (c VMConfig) validateEgress() []error {
	var errs []error
	if err := c.egressPolicy().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DNSUpstream != "" {
		if _, err := egress.ParseUpstream(c.DNSUpstream); err != nil {
			errs = append(errs, &ValidationError{Field: "dns upstream", Value: fmt.Sprintf("%q", c.DNSUpstream),
				Reason: "want ADDR or ADDR:PORT of a DNS server, such as 203.0.113.53 or 203.0.113.53:5353"})
		}
	}
	return errs
}

// EgressStatus is a VM's egress policy and how it is enforced.
type EgressStatus struct {
	Policy EgressPolicy `json:"policy"`
	// DNSUpstream is the resolver allowed names are forwarded to, as
	// configured (VMConfig.DNSUpstream); empty = $SMOLVM_DNS_UPSTREAM or
	// the host's /etc/resolv.conf at start.
	DNSUpstream string `json:"dns_upstream,omitempty"`
	// Summary says in words what the VM may reach.
	Summary string `json:"summary"`
}

// EgressStatus returns the VM's policy and what it means for its network
// mode (with user-mode networking, the VM goes out only through its
// egress proxy).
func (i VMInfo) EgressStatus() EgressStatus { return egressStatus(i.Config, i.Network) }

// EgressPolicy returns the VM's egress policy as of the last look.
func (v *VM) EgressPolicy() EgressPolicy { return v.Info().Config.egressPolicy() }

func egressStatus(cfg VMConfig, n NetworkInfo) EgressStatus {
	p := cfg.egressPolicy()
	st := EgressStatus{Policy: p, DNSUpstream: cfg.DNSUpstream}
	var parts []string
	switch {
	case p.NoEgress:
		parts = append(parts, "no egress")
	case p.Restricted():
		var only []string
		if len(p.AllowDomains) > 0 {
			only = append(only, "domains "+strings.Join(p.AllowDomains, ", "))
		}
		if len(p.AllowCIDRs) > 0 {
			only = append(only, "networks "+strings.Join(p.AllowCIDRs, ", "))
		}
		parts = append(parts, "only "+strings.Join(only, "; "))
	default:
		parts = append(parts, "public addresses (no private, link-local or other special ranges)")
	}
	if len(p.DenyCIDRs) > 0 && !p.NoEgress {
		parts = append(parts, "never "+strings.Join(p.DenyCIDRs, ", "))
	}
	st.Summary = strings.Join(parts, "; ")
	if n.Mode == NetworkUser && !p.NoEgress {
		if n.Proxy != "" {
			st.Summary += "; through the HTTP proxy " + n.Proxy + " only (user-mode networking: the guest's http_proxy and https_proxy)"
		} else {
			st.Summary = "no egress: this user-mode VM has no egress proxy (" + st.Summary + ")"
		}
	}
	return st
}

// SetEgressPolicy replaces the VM's egress policy. It is stored at once
// and holds across restarts, snapshots and forks. On a running TAP VM it
// applies at once: the firewall rules are replaced, addresses resolved
// under the old policy are forgotten (the guest resolves again: it has no
// DNS cache of its own), and the resolver answers the next query under
// the new policy. Connections already open stay open, even to an address
// the new policy denies; only new ones are checked.
func (v *VM) SetEgressPolicy(ctx context.Context, p EgressPolicy) error {
	if err := p.Validate(); err != nil {
		return opError("set egress policy", v.id, err)
	}
	p = p.normalized()
	unlock, err := v.lock(ctx)
	if err != nil {
		return opError("set egress policy", v.id, err)
	}
	defer unlock()
	err = v.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		var cfg VMConfig
		if err := json.Unmarshal(row.Config, &cfg); err != nil {
			return fmt.Errorf("stored config: %w", err)
		}
		cfg.NoEgress, cfg.Egress = p.NoEgress, p
		b, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		row.Config = b
		return nil
	})
	if err != nil {
		return opError("set egress policy", v.id, err)
	}
	info := v.Info()
	if info.State != StateRunning && info.State != StatePaused || info.Network.Mode == NetworkUser && info.Network.Proxy == "" {
		return nil // applied at the next start
	}
	if err := v.applyEgress(info); err != nil {
		return opError("set egress policy", v.id, err)
	}
	v.log().Info("egress policy set", "policy", egressStatus(info.Config, info.Network).Summary)
	return nil
}

// applyEgress installs a running TAP VM's policy: its firewall rules and
// its resolver's spec.
func (v *VM) applyEgress(info VMInfo) error {
	if info.Network.Mode == NetworkUser {
		return rewriteProxySpec(v.paths.dir, info.Config)
	}
	if err := firewallSetVM(info.Process, info.Network, info.Config); err != nil {
		return err
	}
	// The upstream stays the one picked at start unless the config names
	// one: this process's $SMOLVM_DNS_UPSTREAM is not the starter's.
	cfg := info.Config
	if old, err := egress.ReadSpec(filepath.Join(v.paths.dir, egress.SpecFile)); err == nil && cfg.DNSUpstream == "" && old.Upstream != "" {
		cfg.DNSUpstream = old.Upstream
	}
	return writeResolverSpec(v.paths.dir, info.Process, info.Network, cfg)
}

// vmRules is the firewall's view of a VM and its policy.
func vmRules(tag string, n NetworkInfo, cfg VMConfig) (network.VMRules, error) {
	guest, err := netip.ParseAddr(n.GuestIP)
	if err != nil {
		return network.VMRules{}, fmt.Errorf("firewall: guest address: %w", err)
	}
	p := cfg.egressPolicy()
	r := network.VMRules{ID: tag, TAP: n.TAP, GuestIP: guest, Egress: !p.NoEgress}
	if gw, err := netip.ParseAddr(n.Gateway); err == nil {
		r.DNS = gw
	}
	rules, err := egress.Compile(p.NoEgress, p.AllowDomains, p.AllowCIDRs, p.DenyCIDRs)
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	r.Policy = network.EgressPolicy{Allow: rules.Allow, Deny: rules.Deny, Restricted: p.Restricted()}
	if !r.Policy.Restricted {
		r.Policy.Local = network.HostNetworks() // the host's LANs: only when allowed
	}
	return r, nil
}

func firewallSetVM(tag string, n NetworkInfo, cfg VMConfig) error {
	r, err := vmRules(tag, n, cfg)
	if err != nil {
		return err
	}
	return network.NewFirewall(0).AddVM(r)
}

// writeResolverSpec tells the VM's resolver what to serve (see
// egress.SpecFile). The upstream is picked here, at start, from the
// config, $SMOLVM_DNS_UPSTREAM or the host's /etc/resolv.conf; none found
// is not fatal: allowed names then fail to resolve, and the log says why.
func writeResolverSpec(dir, tag string, n NetworkInfo, cfg VMConfig) error {
	spec, err := egressSpec(cfg)
	if err != nil {
		return err
	}
	spec.Listen, spec.Device, spec.Tag = n.Gateway+":53", n.TAP, tag
	return egress.WriteSpec(filepath.Join(dir, egress.SpecFile), spec)
}

// egressSpec is the policy part of a resolver's or proxy's spec.
func egressSpec(cfg VMConfig) (egress.Spec, error) {
	p := cfg.egressPolicy()
	spec := egress.Spec{NoEgress: p.NoEgress, Domains: p.AllowDomains, Allow: p.AllowCIDRs, Deny: p.DenyCIDRs}
	if up, err := egress.Upstream(cfg.DNSUpstream, "/etc/resolv.conf"); err == nil {
		spec.Upstream = up.String()
	} else if cfg.DNSUpstream != "" {
		return spec, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return spec, nil
}

// prepareProxy readies a user-mode VM's egress proxy (internal/egress):
// its socket's place, where only QEMU's user reaches it; its spec, which
// the keeper serves; and the relay QEMU runs, as runAs, for each guest
// connection to the proxy's address. The proxy is there whatever the
// policy (it refuses what the policy does not allow), so a policy set
// later applies without a restart.
func (v *VM) prepareProxy(ctx context.Context, tag string, runAs *hypervisor.Credential, cfg VMConfig) (_ hypervisor.GuestForward, err error) {
	exe, err := v.keeperExe(ctx) // the keeper serves the proxy
	if err != nil {
		return hypervisor.GuestForward{}, err
	}
	spec, err := egressSpec(cfg)
	if err != nil {
		return hypervisor.GuestForward{}, err
	}
	var uid, gid *int
	spec.Peer = os.Getuid()
	if runAs != nil {
		u, g := int(runAs.UID), int(runAs.GID)
		uid, gid = &u, &g
		spec.Group, spec.Peer = g, u
	}
	sock, err := egress.ProxySocket(v.paths.dir, tag, gid)
	if err != nil {
		return hypervisor.GuestForward{}, err
	}
	defer func() {
		if err != nil {
			egress.RemoveProxySocket(v.paths.dir, tag)
		}
	}()
	argv, err := egress.RelayArgv(exe, sock, uid, gid)
	if err != nil {
		return hypervisor.GuestForward{}, err
	}
	spec.Listen, spec.Tag = sock, tag
	if err := egress.WriteSpec(filepath.Join(v.paths.dir, egress.ProxySpecFile), spec); err != nil {
		return hypervisor.GuestForward{}, err
	}
	return hypervisor.GuestForward{Addr: egress.ProxyGuestAddr.String(), Argv: argv}, nil
}

// rewriteProxySpec puts a changed policy in a running user-mode VM's
// proxy spec; its socket and upstream stay the ones picked at start.
func rewriteProxySpec(dir string, cfg VMConfig) error {
	path := filepath.Join(dir, egress.ProxySpecFile)
	old, err := egress.ReadSpec(path)
	if err != nil {
		return err
	}
	if cfg.DNSUpstream == "" {
		cfg.DNSUpstream = old.Upstream
	}
	spec, err := egressSpec(cfg)
	if err != nil {
		return err
	}
	spec.Listen, spec.Tag, spec.Group, spec.Peer = old.Listen, old.Tag, old.Group, old.Peer
	return egress.WriteSpec(path, spec)
}

// removeProxySpec drops a stopped user-mode VM's proxy spec and socket.
func removeProxySpec(dir, tag string) {
	os.Remove(filepath.Join(dir, egress.ProxySpecFile))
	egress.RemoveProxySocket(dir, tag)
}

// removeResolverSpec drops the spec when the VM stops: a resolver started
// for a stopped VM finds nothing to serve.
func removeResolverSpec(dir string) {
	os.Remove(filepath.Join(dir, egress.SpecFile))
}
