// Command bench measures smolvm against its floor, in one run:
//
//   - floor: a bare qemu-system-x86_64 boot of the same kernel, machine and
//     boot args, with a busybox initramfs that prints one line at once, from
//     QEMU's start to that first serial line;
//   - cold: smolvm create + start + first command result, booting;
//   - warm create: the same from the default image's warm template;
//   - fork: Fork of a running VM into one child + the child's first command;
//   - capture: how long a running VM is paused for a memory snapshot;
//   - warm: the round trip of `true` on a running VM, through smolvm's
//     persistent SSH connection and through OpenSSH's ssh client;
//   - with -api N: the round trip of `true` through the SDK, the HTTP API
//     and the Python client, on one VM (see api.go);
//   - with -fs N: a file watch event's latency and the in-memory file
//     API's throughput for 1 MiB and 50 MiB, on one VM (see fs.go).
//
// Run it with scripts/bench.sh, which builds the agent first.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/initramfs"
)

type result struct {
	FloorMedian time.Duration   `json:"floor_median_ns"`
	Floor       []time.Duration `json:"floor_ns"`
	ColdMedian  time.Duration   `json:"cold_median_ns"`
	Cold        []time.Duration `json:"cold_ns"`
	ColdRatio   float64         `json:"cold_over_floor"`
	WarmMedian  time.Duration   `json:"warm_create_median_ns"`
	Warm        []time.Duration `json:"warm_create_ns"`
	WarmRatio   float64         `json:"warm_over_cold"`
	// Fork and capture of a booted VM (its RAM a memfd of its own: the
	// capture copies it aside) and of a warm one (its RAM the template's,
	// mapped privately: it goes through the migration stream).
	ForkMedian        time.Duration   `json:"fork_median_ns"`
	Fork              []time.Duration `json:"fork_ns"`
	ForkRatio         float64         `json:"fork_over_cold"`
	CaptureMedian     time.Duration   `json:"capture_median_ns"`
	Capture           []time.Duration `json:"capture_ns"`
	ForkWarmMedian    time.Duration   `json:"fork_warm_median_ns"`
	ForkWarm          []time.Duration `json:"fork_warm_ns"`
	CaptureWarmMedian time.Duration   `json:"capture_warm_median_ns"`
	CaptureWarm       []time.Duration `json:"capture_warm_ns"`
	SmolvmRTT         time.Duration   `json:"smolvm_rtt_median_ns"`
	OpenSSHRTT        time.Duration   `json:"openssh_rtt_median_ns"`
	RTTRatio          float64         `json:"smolvm_over_openssh"`
	Backend           string          `json:"backend"`
	Kernel            string          `json:"kernel"`
	Runs, RTTRuns     int
}

func main() {
	runs := flag.Int("runs", 5, "cold start and floor runs")
	rttRuns := flag.Int("rtt", 30, "round trips per client")
	asJSON := flag.Bool("json", false, "print JSON")
	density := flag.Int("density", 0, "instead: hold N idle warm VMs, then run `true` in each in turn")
	apiRuns := flag.Int("api", 0, "instead: N round trips of `true` through the Go SDK, the HTTP API (Go client, curl) and the Python client")
	fsRuns := flag.Int("fs", 0, "instead: N rounds of the file API: watch event latency, WriteFile/ReadFile of 1 MiB and 50 MiB (see fs.go)")
	flag.Parse()
	ctx := context.Background()
	if *fsRuns > 0 {
		if err := fsBench(ctx, *fsRuns); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *apiRuns > 0 {
		if err := apiBench(ctx, *apiRuns); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *density > 0 {
		if err := densityBench(ctx, *density); err != nil {
			log.Fatal(err)
		}
		return
	}
	r, err := bench(ctx, *runs, *rttRuns)
	if err != nil {
		log.Fatal(err)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	fmt.Printf("backend %s, kernel %s\n", r.Backend, r.Kernel)
	fmt.Printf("floor (bare QEMU boot to first serial line): median %v of %v\n", ms(r.FloorMedian), msAll(r.Floor))
	fmt.Printf("cold (smolvm create -> first command result): median %v of %v\n", ms(r.ColdMedian), msAll(r.Cold))
	fmt.Printf("cold / floor = %.2f\n", r.ColdRatio)
	fmt.Printf("warm create (template -> first command result): median %v of %v; warm / cold = %.3f\n", ms(r.WarmMedian), msAll(r.Warm), r.WarmRatio)
	fmt.Printf("fork of a booted VM (-> first command in the child): median %v of %v; fork / cold = %.3f\n", ms(r.ForkMedian), msAll(r.Fork), r.ForkRatio)
	fmt.Printf("snapshot capture of a booted VM (paused): median %v of %v\n", ms(r.CaptureMedian), msAll(r.Capture))
	fmt.Printf("fork of a warm VM: median %v of %v; capture of a warm VM: median %v of %v\n",
		ms(r.ForkWarmMedian), msAll(r.ForkWarm), ms(r.CaptureWarmMedian), msAll(r.CaptureWarm))
	fmt.Printf("warm round trip of `true`: smolvm %v, OpenSSH ssh %v (median of %d each); smolvm / OpenSSH = %.3f\n",
		r.SmolvmRTT.Round(10*time.Microsecond), r.OpenSSHRTT.Round(10*time.Microsecond), r.RTTRuns, r.RTTRatio)
}

func bench(ctx context.Context, runs, rttRuns int) (*result, error) {
	q, err := qemu.New()
	if err != nil {
		return nil, err
	}
	b := &image.Builder{CacheDir: smolvm.DefaultHome(), Agent: os.Getenv("SMOLVM_AGENT")}
	img, err := b.Default(ctx) // builds the image now, outside the timings
	if err != nil {
		return nil, err
	}
	r := &result{Backend: q.Name(), Kernel: img.Kernel, Runs: runs, RTTRuns: rttRuns}
	floorInitrd, err := busyboxInitrd()
	if err != nil {
		return nil, err
	}
	defer os.Remove(floorInitrd)
	// The warm template is made once, outside the timings.
	if _, err := warmCreate(ctx); err != nil {
		return nil, fmt.Errorf("warm template: %w", err)
	}
	src, err := smolvm.Start(ctx, smolvm.WithColdBoot())
	if err != nil {
		return nil, err
	}
	defer src.Delete(ctx)
	warmSrc, err := smolvm.Start(ctx)
	if err != nil {
		return nil, err
	}
	defer warmSrc.Delete(ctx)
	// Interleave the runs so drift in machine load hits all alike.
	for i := 0; i < runs; i++ {
		d, err := floor(ctx, q, img.Kernel, floorInitrd, img.BootArgs)
		if err != nil {
			return nil, fmt.Errorf("floor: %w", err)
		}
		r.Floor = append(r.Floor, d)
		d, err = cold(ctx)
		if err != nil {
			return nil, fmt.Errorf("cold: %w", err)
		}
		r.Cold = append(r.Cold, d)
		if d, err = warmCreate(ctx); err != nil {
			return nil, fmt.Errorf("warm create: %w", err)
		}
		r.Warm = append(r.Warm, d)
		if d, err = fork(ctx, src); err != nil {
			return nil, fmt.Errorf("fork: %w", err)
		}
		r.Fork = append(r.Fork, d)
		if d, err = fork(ctx, warmSrc); err != nil {
			return nil, fmt.Errorf("fork: %w", err)
		}
		r.ForkWarm = append(r.ForkWarm, d)
		for _, c := range []struct {
			vm  *smolvm.VM
			out *[]time.Duration
		}{{src, &r.Capture}, {warmSrc, &r.CaptureWarm}} {
			name := fmt.Sprintf("bench-capture-%d", i)
			info, err := c.vm.Snapshot(ctx, name)
			if err != nil {
				return nil, fmt.Errorf("capture: %w", err)
			}
			smolvm.RemoveSnapshot(ctx, name)
			*c.out = append(*c.out, info.Paused)
		}
	}
	r.FloorMedian, r.ColdMedian = median(r.Floor), median(r.Cold)
	r.ColdRatio = float64(r.ColdMedian) / float64(r.FloorMedian)
	r.WarmMedian, r.ForkMedian, r.CaptureMedian = median(r.Warm), median(r.Fork), median(r.Capture)
	r.ForkWarmMedian, r.CaptureWarmMedian = median(r.ForkWarm), median(r.CaptureWarm)
	r.WarmRatio = float64(r.WarmMedian) / float64(r.ColdMedian)
	r.ForkRatio = float64(r.ForkMedian) / float64(r.ColdMedian)
	if r.SmolvmRTT, r.OpenSSHRTT, err = warm(ctx, rttRuns); err != nil {
		return nil, fmt.Errorf("warm: %w", err)
	}
	r.RTTRatio = float64(r.SmolvmRTT) / float64(r.OpenSSHRTT)
	return r, nil
}

// busyboxInitrd makes an initramfs whose init prints one line at once.
func busyboxInitrd() (string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("floor needs busybox-static: %w", err)
	}
	f, err := os.CreateTemp("", "floor-*.cpio")
	if err != nil {
		return "", err
	}
	defer f.Close()
	err = initramfs.Write(f, []initramfs.File{
		{Name: "bin/busybox", Mode: 0o755, Data: bb},
		{Name: "init", Mode: 0o755, Data: []byte("#!/bin/busybox sh\n/bin/busybox echo FLOOR-READY\n/bin/busybox poweroff -f\n")},
		{Name: "dev/console", Mode: fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	})
	return f.Name(), err
}

// floor boots the kernel with the busybox initramfs under the same QEMU
// machine and boot args as a smolvm VM, until the first serial line.
func floor(ctx context.Context, q *qemu.QEMU, kernel, initrd, bootArgs string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := []string{"-machine", "microvm", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", bootArgs + " " + q.ExtraCmdline(),
		"-serial", "stdio"}
	if q.KVM {
		args[3], args[5] = "kvm", "host"
	}
	cmd := exec.CommandContext(ctx, q.Binary, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "FLOOR-READY") {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("no FLOOR-READY line")
}

func cold(ctx context.Context) (time.Duration, error) {
	return firstCommand(ctx, smolvm.WithColdBoot())
}

func warmCreate(ctx context.Context) (time.Duration, error) { return firstCommand(ctx) }

// firstCommand times create + start + the first command's result.
func firstCommand(ctx context.Context, opts ...smolvm.Option) (time.Duration, error) {
	start := time.Now()
	vm, err := smolvm.Start(ctx, opts...)
	if err != nil {
		return 0, err
	}
	defer vm.Delete(ctx)
	res, err := vm.Run(ctx, "true")
	if err != nil {
		return 0, err
	}
	d := time.Since(start)
	if !res.OK() {
		return 0, fmt.Errorf("true failed: %+v", res)
	}
	return d, nil
}

// fork times Fork of src into one child and the child's first command.
func fork(ctx context.Context, src *smolvm.VM) (time.Duration, error) {
	start := time.Now()
	kids, err := src.Fork(ctx, 1)
	if err != nil {
		return 0, err
	}
	defer kids[0].Delete(ctx)
	res, err := kids[0].Run(ctx, "true")
	if err != nil {
		return 0, err
	}
	d := time.Since(start)
	if !res.OK() {
		return 0, fmt.Errorf("true failed: %+v", res)
	}
	return d, nil
}

// densityBench holds n idle VMs from the warm template, then runs `true`
// in each in turn while all stay up, and reports the slowest answer and
// the host memory (PSS of their QEMU processes) per VM.
func densityBench(ctx context.Context, n int) error {
	if _, err := warmCreate(ctx); err != nil {
		return err
	}
	var vms []*smolvm.VM
	defer func() {
		for _, vm := range vms {
			vm.Delete(context.Background())
		}
	}()
	began := time.Now()
	for i := 0; i < n; i++ {
		vm, err := smolvm.Start(ctx)
		if err != nil {
			return fmt.Errorf("VM %d: %w", i+1, err)
		}
		vms = append(vms, vm)
		if (i+1)%25 == 0 {
			fmt.Printf("%d VMs up after %v\n", i+1, time.Since(began).Round(time.Second))
		}
	}
	time.Sleep(10 * time.Second) // let them settle into idling
	var slowest time.Duration
	late := 0
	for _, vm := range vms {
		start := time.Now()
		res, err := vm.Run(ctx, "true")
		if err != nil || !res.OK() {
			return fmt.Errorf("run in %s: %v %+v", vm.ID(), err, res)
		}
		d := time.Since(start)
		slowest = max(slowest, d)
		if d > time.Second {
			late++
		}
	}
	var pss int64
	for _, vm := range vms {
		pss += pssKiB(vm.Info().PID)
	}
	fmt.Printf("density: %d idle VMs up (%v to start them all); `true` in each in turn: slowest %v, %d over 1 s; host memory per VM (QEMU PSS) %d MiB\n",
		n, time.Since(began).Round(time.Second), slowest.Round(time.Millisecond), late, pss/int64(n)/1024)
	return nil
}

// pssKiB is a process's proportional set size, shared pages split among
// the processes that map them.
func pssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			var kib int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib
		}
	}
	return 0
}

func warm(ctx context.Context, n int) (smol, openssh time.Duration, err error) {
	vm, err := smolvm.Start(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer vm.Delete(ctx)
	var a, b []time.Duration
	sshArgs := []string{"-i", vm.DataDir() + "/id_ed25519", "-o", "UserKnownHostsFile=" + vm.DataDir() + "/known_hosts",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"}
	host, port, _ := strings.Cut(vm.Info().Network.SSHAddr, ":")
	sshArgs = append(sshArgs, "-p", port, "root@"+host, "true")
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := vm.Run(ctx, "true"); err != nil {
			return 0, 0, err
		}
		a = append(a, time.Since(start))
		start = time.Now()
		if out, err := exec.CommandContext(ctx, "ssh", sshArgs...).CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("ssh: %v: %s", err, out)
		}
		b = append(b, time.Since(start))
	}
	return median(a), median(b), nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func msAll(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, ms(d))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
