package smolvm_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/egress"
)

// TestEgressProxyUserMode: a user-mode VM has no route out; it reaches
// the network only through its egress proxy, which enforces the same
// policy as a TAP VM's firewall and resolver, changed at runtime too. The
// guest is hostile: it talks to the proxy by hand, with names, addresses,
// the host's own services and malformed requests.
func TestEgressProxyUserMode(t *testing.T) {
	requireVM(t)
	w := newEgressWorld(t) // the namespaced "internet", routed from the host
	ln := listenInNetns(t, w.ns, egOKIP+":8081")
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello-http %s %s\n", r.Host, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	hostPort := serveLine(t, "127.0.0.1:0", "host-loopback-service")

	ctx := testContext(t, 8*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{
		Egress:      smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}},
		DNSUpstream: w.upstream,
	}, smolvm.WithNetwork(smolvm.NetworkUser))
	startVM(t, ctx, vm)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(vm.DataDir(), "keeper.log"))
			t.Logf("keeper log:\n%s", b)
		}
	})
	proxy := vm.Info().Network.Proxy
	if proxy != egress.ProxyGuestAddr.String() {
		t.Fatalf("Network.Proxy = %q, want %s", proxy, egress.ProxyGuestAddr)
	}
	if s := vm.Info().EgressStatus().Summary; !strings.Contains(s, "only domains ok.test") || !strings.Contains(s, "through the HTTP proxy "+proxy) {
		t.Errorf("egress status %q", s)
	}
	host, port, _ := strings.Cut(proxy, ":")
	// connect asks the proxy by hand for a tunnel and returns what came
	// back: the proxy's answer, then what the target sent.
	connect := func(t *testing.T, target string) string {
		t.Helper()
		cmd := fmt.Sprintf(`printf 'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' | nc -w 5 %s %s 2>&1`, target, target, host, port)
		return run(t, ctx, vm, cmd).Stdout
	}
	reaches := func(t *testing.T, target, banner string) {
		t.Helper()
		if out := connect(t, target); !strings.Contains(out, " 200 ") || !strings.Contains(out, banner) {
			t.Errorf("CONNECT %s: %q, want a tunnel to %q", target, out, banner)
		}
	}
	refused := func(t *testing.T, target string) {
		t.Helper()
		out := connect(t, target)
		if !strings.Contains(out, " 403 ") || strings.Contains(out, "-host") || strings.Contains(out, "-service") {
			t.Errorf("CONNECT %s: %q, want 403 Forbidden and nothing of the target", target, out)
		}
	}
	set := func(t *testing.T, p smolvm.EgressPolicy) {
		t.Helper()
		if err := vm.SetEgressPolicy(ctx, p); err != nil {
			t.Fatalf("SetEgressPolicy(%+v): %v", p, err)
		}
	}

	t.Run("guest environment", func(t *testing.T) {
		out := run(t, ctx, vm, `echo "$http_proxy $https_proxy"; . /etc/profile.d/smolvm-proxy.sh && echo "login $HTTPS_PROXY"`).Stdout
		want := "http://" + proxy
		if !strings.Contains(out, want+" "+want) || !strings.Contains(out, "login "+want) {
			t.Errorf("proxy environment: %q, want %s", out, want)
		}
	})
	t.Run("no route out but the proxy", func(t *testing.T) {
		if out := run(t, ctx, vm, "nc -w 3 "+egOKIP+" 8080 </dev/null 2>&1").Stdout; strings.Contains(out, "ok-host") {
			t.Errorf("the guest reached %s directly: %q", egOKIP, out)
		}
	})
	t.Run("allowed domain", func(t *testing.T) {
		reaches(t, "ok.test:8080", "ok-host")
		out := run(t, ctx, vm, "wget -q -O- http://ok.test:8081/path 2>&1").Stdout // through $http_proxy
		if !strings.Contains(out, "hello-http ok.test:8081 /path") {
			t.Errorf("wget through the proxy: %q", out)
		}
	})
	t.Run("latency", func(t *testing.T) {
		// A tunnel through the proxy (relay started, name resolved
		// upstream, connection made) against a command that does nothing,
		// medians of 5: what the proxy adds to a connection.
		median := func(cmd string) time.Duration {
			var ds []time.Duration
			for range 5 {
				began := time.Now()
				run(t, ctx, vm, cmd)
				ds = append(ds, time.Since(began))
			}
			slices.Sort(ds)
			return ds[len(ds)/2]
		}
		base := median("true")
		tunnel := median(`printf 'CONNECT ok.test:8080 HTTP/1.1\r\n\r\n' | nc -w 5 ` + host + " " + port + " >/dev/null")
		refusal := median(`printf 'CONNECT bad.test:8080 HTTP/1.1\r\n\r\n' | nc -w 5 ` + host + " " + port + " >/dev/null")
		t.Logf("command alone %v; tunnel to an allowed name %v (+%v); refusal %v (+%v)", base, tunnel, tunnel-base, refusal, refusal-base)
	})
	t.Run("refused domain", func(t *testing.T) {
		before := w.queries.Load()
		refused(t, "bad.test:8080")
		if n := w.queries.Load() - before; n != 0 {
			t.Errorf("a refused name reached the upstream (%d queries)", n)
		}
		if out := run(t, ctx, vm, "wget -q -O- http://bad.test:8081/ 2>&1").Stdout; strings.Contains(out, "hello-http") {
			t.Errorf("wget of a refused name: %q", out)
		}
	})
	t.Run("addresses not named", func(t *testing.T) {
		refused(t, egOKIP+":8080") // allowed only by name
		refused(t, fmt.Sprintf("127.0.0.1:%d", hostPort))
		refused(t, fmt.Sprintf("localhost:%d", hostPort))
	})
	t.Run("hostile requests", func(t *testing.T) {
		big := strings.Repeat("A", 20<<10)
		for name, cmd := range map[string]string{
			"garbage":     `printf '\026\003\001garbage\r\n\r\n'`,
			"huge header": `printf 'CONNECT ok.test:8080 HTTP/1.1\r\nX: ` + big + `\r\n\r\n'`,
			"no port":     `printf 'CONNECT ok.test HTTP/1.1\r\n\r\n'`,
			"https url":   `printf 'GET https://ok.test/ HTTP/1.1\r\nHost: ok.test\r\n\r\n'`,
			"origin form": `printf 'GET / HTTP/1.1\r\nHost: ok.test:8080\r\n\r\n'`,
			"bad name":    `printf 'CONNECT ok..test:8080 HTTP/1.1\r\n\r\n'`,
		} {
			out := run(t, ctx, vm, cmd+" | nc -w 5 "+host+" "+port+" 2>&1").Stdout
			if !strings.Contains(out, "HTTP/1.1 4") || strings.Contains(out, "-host") {
				t.Errorf("%s: %q, want a 4xx answer", name, out)
			}
			if strings.Contains(out, "socat") {
				t.Errorf("%s: the relay's own messages reached the guest: %q", name, out)
			}
		}
		reaches(t, "ok.test:8080", "ok-host") // still serving
	})
	t.Run("allow cidr", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"ok.test"}, AllowCIDRs: []string{egOtherIP}})
		reaches(t, egOtherIP+":8080", "other-host")
		refused(t, egPrivateIP+":8080")
	})
	t.Run("deny inside allow", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowCIDRs: []string{egTestNet}, DenyCIDRs: []string{egOtherIP + "/32"}})
		reaches(t, egOKIP+":8080", "ok-host")
		refused(t, egOtherIP+":8080")
	})
	t.Run("allowed cidr never opens the host", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowCIDRs: []string{"0.0.0.0/0"}})
		refused(t, fmt.Sprintf("127.0.0.1:%d", hostPort))
		refused(t, fmt.Sprintf("%s:%d", egHostIP, hostPort)) // the host's own address
		reaches(t, egPrivateIP+":8080", "private-host")      // private, but allowed
	})
	t.Run("runtime flip", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{AllowDomains: []string{"bad.test"}})
		reaches(t, "bad.test:8080", "other-host")
		refused(t, "ok.test:8080")
	})
	t.Run("no egress", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{NoEgress: true})
		refused(t, "ok.test:8080")
		refused(t, egOtherIP+":8080")
	})
	t.Run("connection flood", func(t *testing.T) {
		// Each guest connection to the proxy is a relay process on the
		// host, as QEMU's user, whose processes (threads included) are
		// bounded: a guest holding connections open by the hundred
		// spends its own VM's quota, not the host's, and the proxy
		// serves again once they are gone.
		limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", vm.Info().PID))
		if err != nil {
			t.Fatal(err)
		}
		var soft string
		for _, l := range strings.Split(string(limits), "\n") {
			if f := strings.Fields(strings.TrimPrefix(l, "Max processes")); strings.HasPrefix(l, "Max processes") && len(f) > 0 {
				soft = f[0]
			}
		}
		if soft != "512" {
			t.Errorf("QEMU's Max processes (soft) = %q, want 512", soft)
		}
		set(t, smolvm.EgressPolicy{})
		began := time.Now()
		run(t, ctx, vm, "for i in $(seq 170); do { sleep 30 | nc "+host+" "+port+"; } </dev/null >/dev/null 2>&1 & done; sleep 5")
		t.Logf("flood started in %v", time.Since(began))
		if n := userProcs(t, vm.Info().PID); n > 512 {
			t.Errorf("%d relay processes on the host for 170 guest connections, over QEMU's bound", n)
		} else {
			t.Logf("%d relay processes on the host for 170 guest connections (the proxy serves 128)", n)
		}
		run(t, ctx, vm, "pkill nc; pkill sleep; sleep 1")
		reaches(t, egOtherIP+":8080", "other-host")
	})
	t.Run("default perimeter", func(t *testing.T) {
		set(t, smolvm.EgressPolicy{})
		reaches(t, egOtherIP+":8080", "other-host") // public (a documentation range)
		reaches(t, "bad.test:8080", "other-host")   // any name
		refused(t, egPrivateIP+":8080")             // private: only when allowed
		refused(t, "priv.test:8080")                // nor by a name that resolves there
		refused(t, egLANIP+":8080")                 // the host's LAN, though public
		refused(t, "169.254.169.254:80")            // cloud metadata
	})
}

// userProcs counts the processes of QEMU's user (pid's), QEMU aside.
func userProcs(t *testing.T, pid int) int {
	t.Helper()
	uid := func(p string) string {
		b, err := os.ReadFile(filepath.Join("/proc", p, "status"))
		if err != nil {
			return ""
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
				return f[1]
			}
		}
		return ""
	}
	want := uid(strconv.Itoa(pid))
	if want == "" || want == "0" {
		t.Fatalf("no user of QEMU (pid %d)", pid)
	}
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil && e.Name() != strconv.Itoa(pid) && uid(e.Name()) == want {
			n++
		}
	}
	return n
}

// TestEgressProxyAcrossModes: a user-mode VM's clone has its proxy (the
// agent is told again at the clone's new identity), and a memory
// snapshot never becomes a machine of the other network mode (its memory
// holds the network device as that mode set it up): refused up front,
// clearly, leaving nothing.
func TestEgressProxyAcrossModes(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: TAP networking")
	}
	ctx := testContext(t, 6*time.Minute)
	refused := func(t *testing.T, snap, mode string) {
		t.Helper()
		before, _ := smolvm.List(ctx)
		_, err := smolvm.FromSnapshot(ctx, snap, smolvm.WithNetwork(mode))
		if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), "--network ") {
			t.Errorf("%s clone of %s: %v, want ErrInvalid naming the mode to use", mode, snap, err)
		}
		if after, _ := smolvm.List(ctx); len(after) != len(before) {
			t.Errorf("the refused clone left a VM: %d VMs, had %d", len(after), len(before))
		}
	}
	user := newVM(t, ctx, smolvm.VMConfig{MemoryMiB: snapshotMiB}, smolvm.WithNetwork(smolvm.NetworkUser))
	startVM(t, ctx, user)
	takeSnapshot(t, ctx, user, "proxy-user")
	refused(t, "proxy-user", smolvm.NetworkTAP)
	clone := restore(t, ctx, "proxy-user", smolvm.WithNetwork(smolvm.NetworkUser))
	want := "[http://" + egress.ProxyGuestAddr.String() + "]\nprofile"
	if got := strings.TrimSpace(run(t, ctx, clone, `echo "[$http_proxy]"; test -e /etc/profile.d/smolvm-proxy.sh && echo profile`).Stdout); got != want {
		t.Errorf("user-mode clone: proxy environment %q, want %q", got, want)
	}
	// The clone's own proxy answers (and refuses the host's loopback).
	out := run(t, ctx, clone, `printf 'CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n' | nc -w 5 10.0.2.100 3128`).Stdout
	if !strings.Contains(out, " 403 ") {
		t.Errorf("the clone's proxy: %q, want 403", out)
	}

	tap := newVM(t, ctx, smolvm.VMConfig{MemoryMiB: snapshotMiB}, smolvm.WithNetwork(smolvm.NetworkTAP))
	startVM(t, ctx, tap)
	if got := strings.TrimSpace(run(t, ctx, tap, `echo "[$http_proxy]"`).Stdout); got != "[]" {
		t.Errorf("TAP VM: proxy environment %q, want none", got)
	}
	takeSnapshot(t, ctx, tap, "proxy-tap")
	refused(t, "proxy-tap", smolvm.NetworkUser)
}
