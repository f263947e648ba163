package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
)

// fsBench measures the file API on one running VM, n rounds each:
//
//   - watch latency: from the guest's write to the host's callback. The
//     guest stamps its clock just before a shell-builtin write; the
//     guest clock's offset from the host's is taken NTP-style before
//     each write (the fastest of 5 `date` round trips: a loaded TCG
//     guest's clock drifts), so each figure is good to half that round
//     trip (the median is printed), next to the round trip of `true`
//     under the same load.
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
	var lat, unc, rtt []time.Duration
	for i := range n {
		offset, u, err := clockOffset(ctx, vm)
		if err != nil {
			return err
		}
		unc = append(unc, u)
		t0 := time.Now()
		if _, err := vm.Run(ctx, "true"); err != nil {
			return err
		}
		rtt = append(rtt, time.Since(t0))
		name := fmt.Sprintf("f%d", i)
		res, err := vm.Run(ctx, "d=$(date +%s%N); echo x > /root/fsbench/"+name+"; echo $d")
		if err != nil || !res.OK() {
			return fmt.Errorf("guest write: %v %v", err, res)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(res.Stdout), 10, 64)
		if err != nil {
			return fmt.Errorf("guest clock: %q: %w", res.Stdout, err)
		}
		wrote := time.Unix(0, ns).Add(-offset)
		for e := range events {
			if e.Path == name {
				lat = append(lat, e.Time.Sub(wrote))
				break
			}
		}
	}
	fmt.Printf("watch event latency (guest write -> host callback): median %v of %v (guest clock offset known to ±%v, median); round trip of `true` meanwhile: median %v\n",
		median(lat).Round(10*time.Microsecond), roundAll(lat, 100*time.Microsecond), median(unc).Round(10*time.Microsecond), ms(median(rtt)))
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

// clockOffset is the guest clock minus the host's, from the fastest of
// 5 round trips, and half that round trip.
func clockOffset(ctx context.Context, vm *smolvm.VM) (offset, uncertainty time.Duration, err error) {
	best := time.Duration(-1)
	for range 5 {
		t0 := time.Now()
		res, err := vm.Run(ctx, "date +%s%N")
		t1 := time.Now()
		if err != nil {
			return 0, 0, err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(res.Stdout), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("guest clock: %q: %w", res.Stdout, err)
		}
		if rtt := t1.Sub(t0); best < 0 || rtt < best {
			best = rtt
			offset = time.Unix(0, ns).Sub(t0.Add(rtt / 2))
		}
	}
	return offset, best / 2, nil
}

func roundAll(d []time.Duration, to time.Duration) []time.Duration {
	out := slices.Clone(d)
	for i := range out {
		out[i] = out[i].Round(to)
	}
	return out
}
