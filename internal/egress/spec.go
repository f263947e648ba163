package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SpecFile is the name, in a VM's directory, of the file that tells its
// resolver what to serve. smolvm writes it at each start (TAP mode only)
// and at each policy change; the resolver looks at it before every query,
// so a change applies to the next query. Rules the resolver enforces come
// from this file alone.
const SpecFile = "resolver.json"

// UpstreamEnv names the environment variable that sets the upstream
// resolver when a VM's config names none.
const UpstreamEnv = "SMOLVM_DNS_UPSTREAM"

// Spec is the content of SpecFile.
type Spec struct {
	Listen   string   `json:"listen"`             // gateway:53; in a proxy spec, the unix socket
	Device   string   `json:"device"`             // the VM's TAP
	Upstream string   `json:"upstream,omitempty"` // addr:port; empty = none found (allowed names fail)
	Tag      string   `json:"tag"`                // the VM's firewall tag (its resolved set)
	NoEgress bool     `json:"no_egress,omitempty"`
	Domains  []string `json:"domains,omitempty"`
	Allow    []string `json:"allow,omitempty"`
	Deny     []string `json:"deny,omitempty"`
	// Group, in a proxy spec (ProxySpecFile), is the group of QEMU's
	// user, whose relays connect to the socket Listen names.
	Group int `json:"group,omitempty"`
	// Peer, in a proxy spec, is QEMU's uid: only its relays (and root)
	// are served.
	Peer int `json:"peer,omitempty"`
}

// Compile checks a policy and returns the rules a resolver enforces.
func Compile(noEgress bool, domains, allow, deny []string) (Rules, error) {
	r := Rules{NoEgress: noEgress}
	var err error
	if r.Names, err = NewMatcher(domains); err != nil {
		return r, err
	}
	if r.Allow, err = parseCIDRs(allow); err != nil {
		return r, err
	}
	if r.Deny, err = parseCIDRs(deny); err != nil {
		return r, err
	}
	return r, nil
}

func parseCIDRs(list []string) ([]netip.Prefix, error) {
	if len(list) > MaxEntries {
		return nil, fmt.Errorf("%w: %d CIDRs: at most %d", ErrInvalid, len(list), MaxEntries)
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := ParseCIDR(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Rules returns the spec's rules.
func (s Spec) Rules() (Rules, error) { return Compile(s.NoEgress, s.Domains, s.Allow, s.Deny) }

// ParseUpstream reads "ADDR" (port 53) or "ADDR:PORT" ("[ADDR]:PORT" for
// IPv6).
func ParseUpstream(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return ap, fmt.Errorf("%w: DNS upstream %q: want ADDR or ADDR:PORT, such as 203.0.113.53 or 203.0.113.53:5353", ErrInvalid, s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Upstream picks the upstream of a VM: configured if set, else
// $SMOLVM_DNS_UPSTREAM, else the first nameserver of resolvConf (the
// host's /etc/resolv.conf).
func Upstream(configured, resolvConf string) (netip.AddrPort, error) {
	if configured != "" {
		return ParseUpstream(configured)
	}
	if env := os.Getenv(UpstreamEnv); env != "" {
		ap, err := ParseUpstream(env)
		if err != nil {
			return ap, fmt.Errorf("$%s: %w", UpstreamEnv, err)
		}
		return ap, nil
	}
	f, err := os.Open(resolvConf)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("DNS upstream: %w (set %s or --dns-upstream)", err, UpstreamEnv)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			// A zone suffix (fe80::1%eth0) does not parse: skip it.
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(a.Unmap(), 53), nil
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("DNS upstream: no nameserver in %s (set %s or --dns-upstream)", resolvConf, UpstreamEnv)
}

// WriteSpec writes s to path atomically (a new file renamed over the old).
func WriteSpec(path string, s Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".resolver-*")
	if err != nil {
		return fmt.Errorf("resolver spec: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("resolver spec: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("resolver spec: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("resolver spec: %w", err)
	}
	return nil
}

// ReadSpec reads a spec file; a missing one is fs.ErrNotExist.
func ReadSpec(path string) (Spec, error) {
	var s Spec
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("resolver spec: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("resolver spec %s: %w", path, err)
	}
	return s, nil
}

// ServeFile runs the resolver the spec at path describes until ctx ends,
// applying changes of the file to the next query. allow gives the
// function that lets the VM with a tag reach resolved addresses (the
// firewall's). Without a spec (a user-mode VM) it waits for ctx and
// returns nil: there is nothing to serve.
func ServeFile(ctx context.Context, path string, allow func(tag string) AllowFunc, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Stat before reading: a change in between is seen at the first query.
	w := &watcher{path: path, log: log}
	w.mu.Lock()
	w.seen(path)
	w.mu.Unlock()
	spec, err := ReadSpec(path)
	if errors.Is(err, fs.ErrNotExist) {
		<-ctx.Done()
		return nil
	}
	if err != nil {
		return err
	}
	rules, err := spec.Rules()
	if err != nil {
		return err
	}
	listen, err := netip.ParseAddrPort(spec.Listen)
	if err != nil {
		return fmt.Errorf("resolver spec %s: listen %q: %w", path, spec.Listen, err)
	}
	up, err := ParseUpstream(spec.Upstream)
	if err != nil {
		// No upstream: serve anyway, so refused names still fail fast and
		// allowed ones get SERVFAIL rather than a timeout.
		log.Warn("dns: no upstream resolver; allowed names will fail", "err", err)
		up = netip.AddrPort{}
	}
	r, err := NewResolver(Config{Listen: listen, Device: spec.Device, Upstream: up, Allow: allow(spec.Tag), Logger: log}, rules)
	if err != nil {
		return err
	}
	w.r = r
	r.beforeQuery = w.check
	log.Info("dns: serving", "listen", listen, "device", spec.Device, "upstream", up)
	return r.Serve(ctx)
}

// watcher reloads the rules when the spec file changes.
type watcher struct {
	path string
	log  *slog.Logger
	r    *Resolver

	mu    sync.Mutex // held through a reload
	mtime time.Time  // guarded by mu
	size  int64      // guarded by mu
	ino   uint64     // guarded by mu
}

// seen stats path and reports whether it is another file than the one
// last seen; w.mu must be held.
func (w *watcher) seen(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	changed := !fi.ModTime().Equal(w.mtime) || fi.Size() != w.size || ino != w.ino
	w.mtime, w.size, w.ino = fi.ModTime(), fi.Size(), ino
	return changed
}

// check runs before each query: one stat, and a reload if the file is
// another than the one last read (WriteSpec renames a new file in).
//
// The lock is held through the reload: a query that comes meanwhile waits
// for the new rules instead of passing under the old ones.
func (w *watcher) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.seen(w.path) {
		return
	}
	spec, err := ReadSpec(w.path)
	if err != nil {
		w.r.warn("dns: reload", "err", err)
		return
	}
	rules, err := spec.Rules()
	if err != nil {
		w.r.warn("dns: reload", "err", err)
		return
	}
	if up, err := ParseUpstream(spec.Upstream); err == nil {
		w.r.setUpstream(up)
	}
	w.r.SetRules(rules)
	w.log.Info("dns: policy reloaded", "domains", len(spec.Domains), "no_egress", spec.NoEgress)
}
