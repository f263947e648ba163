// Command benchgo is the Go side of python/bench.py: the same measurements
// through the Go SDK directly, so the Python client's figures have their
// baseline from the same run, machine and state directory.
//
//   - cold: smolvm.Start (default VM) + Run("true"), then Delete;
//   - rtt: Run("true") on one running VM.
//
// It prints one JSON object: {"cold_ns": [...], "rtt_ns": [...]}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"time"

	"github.com/smolvm/smolvm"
)

func main() {
	n := flag.Int("n", 5, "cold starts to time")
	rtt := flag.Int("rtt", 200, "round trips of `true` to time")
	flag.Parse()
	ctx := context.Background()
	var out struct {
		Cold []time.Duration `json:"cold_ns"`
		RTT  []time.Duration `json:"rtt_ns"`
	}
	for range *n {
		t0 := time.Now()
		vm, err := smolvm.Start(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := vm.Run(ctx, "true"); err != nil {
			log.Fatal(err)
		}
		out.Cold = append(out.Cold, time.Since(t0))
		if err := vm.Delete(ctx); err != nil {
			log.Fatal(err)
		}
	}
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	for i := range *rtt + 5 {
		t0 := time.Now()
		if _, err := vm.Run(ctx, "true"); err != nil {
			log.Fatal(err)
		}
		if i >= 5 { // the first few warm the connection
			out.RTT = append(out.RTT, time.Since(t0))
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		log.Fatal(err)
	}
}
