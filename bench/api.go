package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/apiclient"
)

// pyRunner is a Python process that reconnects to one VM through the
// Python client and times vm.run("true") each time it reads a line, so
// interpreter start and import are outside the figure.
const pyRunner = `
import sys, time
sys.path.insert(0, sys.argv[1])
from smolvm import SmolVM
vm = SmolVM.from_id(sys.argv[2])
vm.run("true")
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter_ns()
    vm.run("true")
    print(time.perf_counter_ns() - t0, flush=True)
`

// apiBench times the round trip of `true` on one running VM, interleaved
// round by round so that load falls on every path alike: the Go SDK, the
// HTTP API through the Go client on the UNIX socket, curl on the socket
// (and curl's own cost, from GET /v1/health), and the Python client.
func apiBench(ctx context.Context, n int) error {
	home := os.Getenv("SMOLVM_HOME")
	bin := os.Getenv("SMOLVM_BIN")
	if bin == "" {
		bin = "bin/smolvm"
	}
	sock := filepath.Join(home, api.SocketFile)
	srv := exec.Command(bin, "serve", "--socket", sock, "--idle-timeout", "1m")
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return fmt.Errorf("smolvm serve: %w", err)
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	c, err := apiclient.New("unix://"+sock, "")
	if err != nil {
		return err
	}
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err = c.Health(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("smolvm serve did not answer: %w", err)
		}
	}
	vm, err := smolvm.Start(ctx)
	if err != nil {
		return err
	}
	defer vm.Delete(context.WithoutCancel(ctx))

	// A handle of the kind the server holds: reconnected, not the creator.
	other, err := smolvm.FromID(ctx, vm.ID())
	if err != nil {
		return err
	}
	defer other.Close()

	python := "python3"
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		python = "/usr/bin/python3"
	}
	py := exec.CommandContext(ctx, python, "-c", pyRunner, "python", vm.ID())
	py.Env = append(os.Environ(), "SMOLVM_HOST=unix://"+sock)
	py.Stderr = os.Stderr
	pyIn, _ := py.StdinPipe()
	pyOut, _ := py.StdoutPipe()
	if err := py.Start(); err != nil {
		return fmt.Errorf("python3: %w", err)
	}
	defer func() { pyIn.Close(); py.Wait() }()
	lines := bufio.NewScanner(pyOut)
	if !lines.Scan() || lines.Text() != "ready" {
		return fmt.Errorf("python client did not start: %q", lines.Text())
	}

	curl := func(args ...string) (time.Duration, error) {
		start := time.Now()
		out, err := exec.CommandContext(ctx, "curl", append([]string{"-sf", "--unix-socket", sock}, args...)...).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("curl: %v: %s", err, out)
		}
		return time.Since(start), nil
	}
	execURL := "http://smolvm/v1/vms/" + vm.ID() + "/exec"
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	timed := func(fn func() error) (time.Duration, error) {
		t0 := time.Now()
		err := fn()
		return time.Since(t0), err
	}
	// Each round runs every path once, starting one path later than the
	// round before, so no path always follows the same one.
	probes := []struct {
		name string
		run  func() (time.Duration, error)
	}{
		{"Go SDK vm.Run", func() (time.Duration, error) {
			return timed(func() error { _, err := vm.Run(ctx, "true"); return err })
		}},
		{"Go SDK, a handle from FromID", func() (time.Duration, error) {
			return timed(func() error { _, err := other.Run(ctx, "true"); return err })
		}},
		{"HTTP API, Go client, UNIX socket", func() (time.Duration, error) {
			return timed(func() error { _, err := c.Exec(ctx, vm.ID(), api.Exec{Cmd: "true"}); return err })
		}},
		{"  API's own cost (round trip - Server-Timing run)", func() (time.Duration, error) {
			t0 := time.Now()
			resp, err := hc.Post(execURL, "application/json", strings.NewReader(`{"cmd":"true"}`))
			if err != nil {
				return 0, err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			total := time.Since(t0)
			var ms float64
			if _, err := fmt.Sscanf(resp.Header.Get("Server-Timing"), "run;dur=%g", &ms); err != nil {
				return 0, fmt.Errorf("no Server-Timing in the answer (status %s)", resp.Status)
			}
			return total - time.Duration(ms*float64(time.Millisecond)), nil
		}},
		{"  GET /v1/health, Go client", func() (time.Duration, error) {
			return timed(func() error { _, err := c.Health(ctx); return err })
		}},
		{"Python client vm.run", func() (time.Duration, error) {
			fmt.Fprintln(pyIn)
			if !lines.Scan() {
				return 0, fmt.Errorf("python client stopped")
			}
			ns, err := strconv.ParseInt(strings.TrimSpace(lines.Text()), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("python client: %q", lines.Text())
			}
			return time.Duration(ns), nil
		}},
		{"curl --unix-socket exec", func() (time.Duration, error) {
			return curl("-H", "Content-Type: application/json", "-d", `{"cmd":"true"}`, execURL)
		}},
		{"  GET /v1/health, curl (curl's own cost)", func() (time.Duration, error) {
			return curl("http://smolvm/v1/health")
		}},
	}
	times := make([][]time.Duration, len(probes))
	for i := range n + 5 {
		for k := range probes {
			j := (i + k) % len(probes)
			d, err := probes[j].run()
			if err != nil {
				return fmt.Errorf("%s: %w", probes[j].name, err)
			}
			if i >= 5 { // the first rounds warm connections and caches
				times[j] = append(times[j], d)
			}
		}
	}
	base := median(times[0])
	fmt.Printf("round trip of `true`, median of %d rotated rounds on one VM:\n", n)
	for j, p := range probes {
		m := median(times[j])
		fmt.Printf("  %-50s %8.2f ms", p.name, float64(m.Microseconds())/1000)
		if j > 0 && !strings.HasPrefix(p.name, " ") {
			fmt.Printf("  (%+.2f ms)", float64((m-base).Microseconds())/1000)
		}
		fmt.Println()
	}
	return nil
}
