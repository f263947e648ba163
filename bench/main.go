// Command bench measures smolvm against its floor, in one run:
//
//   - floor: a bare qemu-system-x86_64 boot of the same kernel, machine and
//     boot args, with a busybox initramfs that prints one line at once, from
//     QEMU's start to that first serial line;
//   - cold: smolvm create + start + first command result;
//   - warm: the round trip of `true` on a running VM, through smolvm's
//     persistent SSH connection and through OpenSSH's ssh client.
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
	FloorMedian   time.Duration   `json:"floor_median_ns"`
	Floor         []time.Duration `json:"floor_ns"`
	ColdMedian    time.Duration   `json:"cold_median_ns"`
	Cold          []time.Duration `json:"cold_ns"`
	ColdRatio     float64         `json:"cold_over_floor"`
	SmolvmRTT     time.Duration   `json:"smolvm_rtt_median_ns"`
	OpenSSHRTT    time.Duration   `json:"openssh_rtt_median_ns"`
	RTTRatio      float64         `json:"smolvm_over_openssh"`
	Backend       string          `json:"backend"`
	Kernel        string          `json:"kernel"`
	Runs, RTTRuns int
}

func main() {
	runs := flag.Int("runs", 5, "cold start and floor runs")
	rttRuns := flag.Int("rtt", 30, "round trips per client")
	asJSON := flag.Bool("json", false, "print JSON")
	flag.Parse()
	ctx := context.Background()
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
	// Interleave floor and cold runs so drift in machine load hits both.
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
	}
	r.FloorMedian, r.ColdMedian = median(r.Floor), median(r.Cold)
	r.ColdRatio = float64(r.ColdMedian) / float64(r.FloorMedian)
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
	start := time.Now()
	vm, err := smolvm.Start(ctx)
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
