package apiclient

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// BenchmarkExecTrue measures the round trip of `true` in one running VM
// through the SDK and through the API (buffered, NDJSON stream and
// WebSocket) in the same run, reporting the median of each (an op is one
// round trip of each way):
//
//	go test -run '^$' -bench ExecTrue -benchtime 100x ./internal/apiclient
func BenchmarkExecTrue(b *testing.B) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	if os.Getenv("SMOLVM_ALPINE_SOURCE") == "" {
		b.Skip("SMOLVM_ALPINE_SOURCE is unset; point it at a local Alpine minirootfs")
	}
	ctx := context.Background()
	home := b.TempDir()
	agent := filepath.Join(b.TempDir(), "smolvm-agent")
	build := exec.Command("go", "build", "-o", agent, "../../cmd/smolvm-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	vm, err := smolvm.Start(ctx, smolvm.WithHome(home), smolvm.WithAgent(agent))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { vm.Delete(context.WithoutCancel(ctx)) })

	srv := server.New(server.Config{Home: home, Agent: agent})
	b.Cleanup(func() { srv.Close() })
	sock := filepath.Join(b.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler("")}
	go hs.Serve(l)
	b.Cleanup(func() { hs.Close() })
	c, err := New("unix://"+sock, "")
	if err != nil {
		b.Fatal(err)
	}
	req := api.Exec{Cmd: "true"}
	ways := []struct {
		name string
		run  func() error
	}{
		{"sdk", func() error { _, err := vm.Run(ctx, "true"); return err }},
		{"api-buffered", func() error { _, err := c.Exec(ctx, vm.ID(), req); return err }},
		{"api-ndjson", func() error { _, err := c.ExecStream(ctx, vm.ID(), req, Stdio{}); return err }},
		{"api-websocket", func() error {
			// A stdin (empty) takes the WebSocket.
			_, err := c.ExecStream(ctx, vm.ID(), req, Stdio{Stdin: strings.NewReader("")})
			return err
		}},
	}
	for _, w := range ways { // warm the connections
		if err := w.run(); err != nil {
			b.Fatalf("%s: %v", w.name, err)
		}
	}
	// Interleaved, so that the load of the machine weighs on each way
	// alike.
	ds := make([][]time.Duration, len(ways))
	b.ResetTimer()
	for range b.N {
		for i, w := range ways {
			t0 := time.Now()
			if err := w.run(); err != nil {
				b.Fatalf("%s: %v", w.name, err)
			}
			ds[i] = append(ds[i], time.Since(t0))
		}
	}
	for i, w := range ways {
		slices.Sort(ds[i])
		b.ReportMetric(float64(ds[i][len(ds[i])/2].Microseconds())/1000, w.name+"-median-ms")
	}
}
