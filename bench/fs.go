package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/smolvm/smolvm"
)

// fsBench measures the file API on one running VM, n rounds each:
//
//   - watch latency: from the guest's write to the host's callback. A
//     guest shell started once reads file names on stdin and, for each,
//     writes the file with a builtin (no process start) and answers on
//     stdout. The host stamps the line it sends (t0), the event's arrival
//     and the answer's (t1): the write happened one stdin trip after t0,
//     so latency = event - t0 - (t1 - t0)/2, with (t1 - t0)/2 as its
//     error bound; event - t0 is printed too (an upper bound).
//   - throughput of vm.FS().WriteFile and ReadFile for 1 MiB and 50 MiB.
func fsBench(ctx context.Context, n int) error {
	vm, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{DiskMiB: 1024})
	if err != nil {
		return err
	}
	defer vm.Delete(context.WithoutCancel(ctx))
	if err := vm.Start(ctx); err != nil {
		return err
	}
	gfs := vm.FS()
	if err := gfs.MkdirAll(ctx, "/root/fsbench", 0); err != nil {
		return err
	}
	events := make(chan smolvm.WatchEvent, 16)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- gfs.Watch(wctx, "/root/fsbench", smolvm.WatchOptions{Ready: func() { close(ready) }}, func(e smolvm.WatchEvent) {
			if e.Op == smolvm.WatchCreate {
				events <- e
			}
		})
	}()
	select {
	case <-ready:
	case err := <-watchErr:
		return fmt.Errorf("watch: %w", err)
	}
	// The writer: one shell, builtins only.
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	shellErr := make(chan error, 1)
	go func() {
		_, err := vm.Exec(ctx, "cd /root/fsbench && while read n; do echo x > $n; echo ok; done", smolvm.ExecOptions{Stdin: inR, Stdout: outW})
		outW.CloseWithError(err)
		shellErr <- err
	}()
	defer func() { inW.Close(); <-shellErr }()
	answers := bufio.NewReader(outR)
	var lat, upper, bound []time.Duration
	for i := range n + 1 {
		name := fmt.Sprintf("f%d", i)
		t0 := time.Now()
		if _, err := io.WriteString(inW, name+"\n"); err != nil {
			return fmt.Errorf("guest writer: %w", err)
		}
		if _, err := answers.ReadString('\n'); err != nil {
			return fmt.Errorf("guest writer: %w", err)
		}
		t1 := time.Now()
		var ev time.Time
		for e := range events {
			if e.Path == name {
				ev = e.Time
				break
			}
		}
		if i == 0 {
			continue // warms the shell up
		}
		half := t1.Sub(t0) / 2
		lat, upper, bound = append(lat, ev.Sub(t0)-half), append(upper, ev.Sub(t0)), append(bound, half)
	}
	fmt.Printf("watch event latency (guest write -> host callback): median %v of %v, ± median %v; upper bound (line sent -> callback) median %v\n",
		median(lat).Round(10*time.Microsecond), roundAll(lat, 100*time.Microsecond), median(bound).Round(10*time.Microsecond), median(upper).Round(10*time.Microsecond))
	for _, size := range []int{1 << 20, 50 << 20} {
		data := make([]byte, size)
		rand.Read(data)
		var w, r []time.Duration
		for range n {
			t0 := time.Now()
			if err := gfs.WriteFile(ctx, "/root/fsbench/data", data, 0); err != nil {
				return err
			}
			t1 := time.Now()
			got, err := gfs.ReadFile(ctx, "/root/fsbench/data")
			if err != nil {
				return err
			}
			t2 := time.Now()
			if !bytes.Equal(got, data) {
				return fmt.Errorf("%d bytes read back differ", size)
			}
			w, r = append(w, t1.Sub(t0)), append(r, t2.Sub(t1))
		}
		mib := float64(size) / (1 << 20)
		fmt.Printf("FS %d MiB: WriteFile median %v (%.1f MiB/s), ReadFile median %v (%.1f MiB/s); runs %v / %v\n",
			size>>20, ms(median(w)), mib/median(w).Seconds(), ms(median(r)), mib/median(r).Seconds(), msAll(w), msAll(r))
	}
	return nil
}

func roundAll(d []time.Duration, to time.Duration) []time.Duration {
	out := slices.Clone(d)
	for i := range out {
		out[i] = out[i].Round(to)
	}
	return out
}
