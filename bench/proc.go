package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/smolvm/smolvm"
)

// procBench times, on one running VM and interleaved round by round: the
// round trip of `true` as a shell string (vm.Run) and as an argv without
// a shell (vm.Command), and a background process's start to its first
// output byte at the host (StartProcess, then Attach following).
func procBench(ctx context.Context, n int) error {
	vm, err := smolvm.Start(ctx)
	if err != nil {
		return err
	}
	defer vm.Delete(context.Background())
	// One of each first: the connection and the guest's page cache.
	if _, err := vm.Run(ctx, "true"); err != nil {
		return err
	}
	var shell, argv, first []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		res, err := vm.Run(ctx, "true")
		if err != nil || !res.OK() {
			return fmt.Errorf("shell true: %v %v", res, err)
		}
		shell = append(shell, time.Since(t0))

		t0 = time.Now()
		res, err = vm.Command(ctx, "true").Run()
		if err != nil || !res.OK() {
			return fmt.Errorf("argv true: %v %v", res, err)
		}
		argv = append(argv, time.Since(t0))

		d, err := firstOutput(ctx, vm)
		if err != nil {
			return fmt.Errorf("background: %w", err)
		}
		first = append(first, d)
	}
	fmt.Printf("round trip of `true`, shell string (vm.Run): median %v of %d\n", median(shell).Round(10*time.Microsecond), n)
	fmt.Printf("round trip of `true`, argv (vm.Command): median %v of %d; argv / shell = %.3f\n",
		median(argv).Round(10*time.Microsecond), n, float64(median(argv))/float64(median(shell)))
	fmt.Printf("background process start -> first output at the host: median %v of %d\n", median(first).Round(10*time.Microsecond), n)
	return nil
}

var errFirstByte = errors.New("first byte")

// firstOutput starts `echo x` in the background and follows it until its
// first byte arrives.
func firstOutput(ctx context.Context, vm *smolvm.VM) (time.Duration, error) {
	t0 := time.Now()
	p, err := vm.StartProcess(ctx, smolvm.ProcessSpec{Args: []string{"echo", "x"}})
	if err != nil {
		return 0, err
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var d time.Duration
	_, err = p.Attach(actx, writerFunc(func(b []byte) (int, error) {
		if d == 0 {
			d = time.Since(t0)
			cancel()
		}
		return len(b), nil
	}), os.Stderr, smolvm.AttachOptions{Follow: true})
	if d == 0 {
		return 0, fmt.Errorf("no output: %v", err)
	}
	return d, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
