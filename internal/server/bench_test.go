package server_test

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// TestRoundTripFigures measures, in one run on one VM, the round trip of
// `true` through the Go SDK, through the API with a Go net/http client on
// the UNIX socket, and with `curl --unix-socket` (a process per request,
// so also curl alone against /v1/health). Opt-in, as it only reports:
//
//	SMOLVM_BENCH=1 go test -count=1 -run TestRoundTripFigures -v ./internal/server
//
// SMOLVM_BENCH_N sets the rounds (default 50); the kinds are interleaved
// so that drift on a busy machine hits them alike.
func TestRoundTripFigures(t *testing.T) {
	if os.Getenv("SMOLVM_BENCH") == "" {
		t.Skip("figures only: set SMOLVM_BENCH=1")
	}
	requireVM(t)
	n := 50
	if v, err := strconv.Atoi(os.Getenv("SMOLVM_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	ts := startServer(t, server.Config{})
	ctx := testContext(t, 10*time.Minute)
	const id = "bench1"
	t.Cleanup(func() { deleteVM(t, id) })
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: id, Start: true}), 201, nil)
	vm, err := smolvm.FromID(ctx, id, smolvm.WithHome(testEnv.home))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	curl, _ := exec.LookPath("curl")

	kinds := []struct {
		name string
		run  func() error
	}{
		{"go sdk (vm.Run)", func() error {
			res, err := vm.Run(ctx, "true")
			if err == nil && !res.OK() {
				t.Fatalf("exit %d", res.ExitCode)
			}
			return err
		}},
		{"http api (net/http, unix socket)", func() error {
			if r := ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec", api.Exec{Cmd: "true"}); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			return nil
		}},
		{"http api health (net/http, no guest)", func() error {
			if r := ts.do(t, ctx, "GET", "/v1/health", nil); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			return nil
		}},
	}
	if curl != "" {
		kinds = append(kinds,
			struct {
				name string
				run  func() error
			}{"curl --unix-socket exec", func() error {
				return exec.CommandContext(ctx, curl, "-sf", "--unix-socket", ts.sock, "-H", "Content-Type: application/json",
					"-d", `{"cmd":"true"}`, "-o", "/dev/null", "http://smolvm/v1/vms/"+id+"/exec").Run()
			}},
			struct {
				name string
				run  func() error
			}{"curl --unix-socket health (curl alone)", func() error {
				return exec.CommandContext(ctx, curl, "-sf", "--unix-socket", ts.sock, "-o", "/dev/null", "http://smolvm/v1/health").Run()
			}})
	}
	times := make([][]time.Duration, len(kinds))
	for round := -5; round < n; round++ { // 5 rounds of warm-up
		for i, k := range kinds {
			start := time.Now()
			if err := k.run(); err != nil {
				t.Fatalf("%s: %v", k.name, err)
			}
			if round >= 0 {
				times[i] = append(times[i], time.Since(start))
			}
		}
	}
	med := make([]time.Duration, len(kinds))
	for i, k := range kinds {
		slices.Sort(times[i])
		med[i] = times[i][len(times[i])/2]
		t.Logf("%-40s median %8v  p10 %8v  p90 %8v  (n=%d)", k.name, med[i].Round(time.Microsecond),
			times[i][len(times[i])/10].Round(time.Microsecond), times[i][len(times[i])*9/10].Round(time.Microsecond), n)
	}
	t.Logf("API overhead over the Go SDK (median difference): %v", (med[1] - med[0]).Round(time.Microsecond))
}
