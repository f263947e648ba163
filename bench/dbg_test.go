package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
)

func TestDbg(t *testing.T) {
	for i := 0; i < 3; i++ {
		ctx := context.Background()
		s := time.Now()
		vm, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{BootArgs: image.SSHBootArgs + " smolvm.debug"})
		if err != nil {
			t.Fatal(err)
		}
		created := time.Since(s)
		var seen time.Duration
		go func() {
			for i := 0; i < 1000; i++ {
				b, _ := os.ReadFile(vm.Info().ConsoleLog)
				if strings.Contains(string(b), "ready") {
					seen = time.Since(s)
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		if err := vm.Start(ctx); err != nil {
			t.Fatal(err)
		}
		started := time.Since(s)
		vm.Run(ctx, "true")
		d := time.Since(s)
		b, _ := os.ReadFile(vm.Info().ConsoleLog)
		var steps []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "smolvm-") || strings.HasPrefix(l, "DBG") {
				steps = append(steps, l)
			}
		}
		t.Logf("created %v ready-seen %v started %v total %v:\n%s", created.Round(time.Millisecond), seen.Round(time.Millisecond), started.Round(time.Millisecond), d.Round(time.Millisecond), strings.Join(steps, "\n"))
		vm.Delete(ctx)
	}
}
