package smolvm_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/network"
)

// TestLimits boots one VM with every limit set at create and checks, on
// it, that the guest is held to each (timings as lower bounds only: a
// throttle guarantees a minimum duration, never a maximum), that a change
// at runtime takes effect, that the metrics make sense, that a guest
// lying in /proc/meminfo is parsed boundedly, and that stop and delete
// leave no cgroup or rule behind while start applies the limits again.
func TestLimits(t *testing.T) {
	requireVM(t)
	if os.Geteuid() != 0 {
		t.Skip("limits need root (cgroups, TAP shaping)")
	}
	ctx := testContext(t, 6*time.Minute)
	// A whole CPU at first: a lower quota would make the guest's own CPU
	// the bottleneck of its disk and network, which would then prove
	// nothing about their limits.
	lim := smolvm.Limits{CPU: 1, MemoryMiB: smolvm.DefaultMemoryMiB + 256, DiskBPS: 1_000_000, NetBPS: 128 << 10}
	vm := newVM(t, ctx, smolvm.VMConfig{Limits: lim})
	startVM(t, ctx, vm)
	info := vm.Info()
	if info.Config.Limits != lim {
		t.Fatalf("config limits = %+v, want %+v", info.Config.Limits, lim)
	}

	cgroupDirs := func(t *testing.T) []string {
		t.Helper()
		b, err := os.ReadFile("/proc/" + strconv.Itoa(vm.Info().PID) + "/cgroup")
		if err != nil {
			t.Fatal(err)
		}
		var dirs []string
		for line := range strings.Lines(string(b)) {
			parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
			if len(parts) != 3 || !strings.Contains(parts[2], "/smolvm/") {
				continue
			}
			switch parts[1] {
			case "cpu", "memory", "":
				root := "/sys/fs/cgroup"
				if parts[1] != "" {
					root = filepath.Join(root, parts[1])
				}
				dirs = append(dirs, filepath.Join(root, parts[2]))
			}
		}
		if len(dirs) == 0 {
			t.Fatalf("QEMU is in no smolvm cgroup:\n%s", b)
		}
		return dirs
	}
	quota := func(t *testing.T) string {
		t.Helper()
		for _, d := range cgroupDirs(t) {
			if b, err := os.ReadFile(filepath.Join(d, "cpu.cfs_quota_us")); err == nil {
				return strings.TrimSpace(string(b))
			}
			if b, err := os.ReadFile(filepath.Join(d, "cpu.max")); err == nil {
				return strings.Fields(string(b))[0]
			}
		}
		t.Fatal("no CPU quota file in the VM's cgroup")
		return ""
	}
	timed := func(t *testing.T, cmd string, opts ...smolvm.RunOption) time.Duration {
		t.Helper()
		began := time.Now()
		res := run(t, ctx, vm, cmd, opts...)
		if !res.OK() {
			t.Fatalf("%s: exit %d: %s", cmd, res.ExitCode, res.Output())
		}
		return time.Since(began)
	}
	// The guest's dd reads its disk device past its page cache
	// (O_DIRECT), so what it times is the disk, not its filesystem
	// (whose journal commits would add seconds at random to writes).
	const ddBytes = 2 << 20
	dd := "dd if=/dev/vda of=/dev/null bs=64k count=32 iflag=direct 2>&1"
	atLeast := func(t *testing.T, what string, got time.Duration, bytes, rate int64) {
		t.Helper()
		// QEMU and tbf let a burst of a tenth of the rate (tbf: at least
		// 128 KiB) through, nftables a second's worth; 0.6 leaves room
		// for that and for clocks.
		want := time.Duration(0.6 * float64(bytes) / float64(rate) * float64(time.Second))
		t.Logf("%s: %d bytes at %d B/s took %v (at least %v)", what, bytes, rate, got.Round(time.Millisecond), want.Round(time.Millisecond))
		if got < want {
			t.Errorf("%s took %v, want at least %v: not throttled", what, got, want)
		}
	}

	t.Run("cgroup", func(t *testing.T) {
		if q := quota(t); q != "100000" {
			t.Errorf("CPU quota = %s µs per 100 ms, want 100000", q)
		}
		want := strconv.Itoa(lim.MemoryMiB << 20)
		for _, d := range cgroupDirs(t) {
			for _, f := range []string{"memory.limit_in_bytes", "memory.max"} {
				if b, err := os.ReadFile(filepath.Join(d, f)); err == nil && strings.TrimSpace(string(b)) != want {
					t.Errorf("%s = %s, want %s", f, b, want)
				}
			}
		}
	})
	const netBytes = 1 << 20
	toGuest := func(t *testing.T) time.Duration {
		return timed(t, "cat >/dev/null", smolvm.WithStdin(bytes.NewReader(make([]byte, netBytes))))
	}
	fromGuest := func(t *testing.T) time.Duration {
		return timed(t, "head -c "+strconv.Itoa(netBytes)+" /dev/zero", smolvm.WithOutputLimit(2*netBytes))
	}
	var ddLimited, inLimited, outLimited time.Duration
	t.Run("disk throttled", func(t *testing.T) {
		ddLimited = timed(t, dd)
		atLeast(t, "dd", ddLimited, ddBytes, lim.DiskBPS)
	})
	t.Run("net throttled", func(t *testing.T) {
		inLimited, outLimited = toGuest(t), fromGuest(t)
		atLeast(t, "to the guest", inLimited, netBytes, lim.NetBPS)
		atLeast(t, "from the guest", outLimited, netBytes, lim.NetBPS)
	})
	t.Run("runtime change", func(t *testing.T) {
		// Lifted: the same transfers must be clearly faster, or the time
		// above was not the limits' doing. A ratio, with a wide margin
		// (about 4x is expected), holds on a loaded machine too.
		free := lim
		free.DiskBPS, free.NetBPS = 0, 0
		if err := vm.SetLimits(ctx, free); err != nil {
			t.Fatal(err)
		}
		if got := vm.Info().Config.Limits; got != free {
			t.Errorf("stored limits = %+v, want %+v", got, free)
		}
		for _, c := range []struct {
			what    string
			limited time.Duration
			run     func(*testing.T) time.Duration
		}{
			{"dd", ddLimited, func(t *testing.T) time.Duration { return timed(t, dd) }},
			{"to the guest", inLimited, toGuest},
			{"from the guest", outLimited, fromGuest},
		} {
			got := c.run(t)
			t.Logf("%s unthrottled took %v (throttled %v, %.1fx)", c.what, got.Round(time.Millisecond), c.limited.Round(time.Millisecond), float64(c.limited)/float64(got))
			if c.limited > 0 && float64(c.limited) < 1.5*float64(got) {
				t.Errorf("%s: throttled %v is not clearly slower than unthrottled %v", c.what, c.limited, got)
			}
		}
		// Down again, and the CPU quota too.
		lim.CPU, lim.DiskBPS = 0.2, 2_000_000
		if err := vm.SetLimits(ctx, lim); err != nil {
			t.Fatal(err)
		}
		if q := quota(t); q != "20000" {
			t.Errorf("CPU quota = %s after the change, want 20000", q)
		}
		atLeast(t, "dd after the change", timed(t, dd), ddBytes, lim.DiskBPS)
		bad := lim
		bad.MemoryMiB = smolvm.DefaultMemoryMiB // below the guest's RAM + margin
		if err := vm.SetLimits(ctx, bad); !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("a memory limit below the guest's RAM: err = %v, want ErrInvalid", err)
		}
		if got := vm.Info().Config.Limits; got != lim {
			t.Errorf("a refused change changed the limits to %+v", got)
		}
	})
	t.Run("cpu throttled", func(t *testing.T) {
		// In a session of its own, so the end of this command's session
		// does not end it; the command returns once the loop runs (or
		// fails after 10 s).
		spin := `setsid sh -c 'exec timeout 8 sh -c "while :; do :; done"' </dev/null >/dev/null 2>&1 &
			for i in $(seq 100); do pgrep -f "^sh -c while" >/dev/null && exit 0; sleep 0.1; done; exit 1`
		if res := run(t, ctx, vm, spin); !res.OK() {
			t.Fatalf("the guest's busy loop did not start: %s", res.Output())
		}
		m1, err := vm.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second) // the window measured, not a wait for an event
		m2, err := vm.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		used := float64(m2.CPU.TimeNS-m1.CPU.TimeNS) / float64(m2.At.Sub(m1.At))
		load := -1.0
		if m2.Guest != nil {
			load = m2.Guest.Load1
		}
		t.Logf("a guest spinning under a 0.2 CPU quota used %.3f CPUs (metrics say %.3f), throttled %v, guest load %.2f", used, m2.CPU.Usage, time.Duration(m2.CPU.ThrottledNS-m1.CPU.ThrottledNS), load)
		if used > 0.2*1.5 {
			t.Errorf("QEMU used %.2f CPUs, want at most ~0.2", used)
		}
		if m2.CPU.ThrottledNS <= m1.CPU.ThrottledNS {
			t.Errorf("throttled time did not grow (%d -> %d): the quota never held the guest back", m1.CPU.ThrottledNS, m2.CPU.ThrottledNS)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		m1, err := vm.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		run(t, ctx, vm, "dd if=/dev/zero of=/root/m bs=64k count=4 oflag=direct 2>/dev/null; rm /root/m")
		m2, err := vm.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("metrics: %+v guest %+v net %+v", *m2, m2.Guest, m2.Net)
		switch {
		case m2.CPU.TimeNS <= 0 || m2.CPU.TimeNS < m1.CPU.TimeNS:
			t.Errorf("CPU time %d then %d", m1.CPU.TimeNS, m2.CPU.TimeNS)
		case m2.Memory.RSS < 16<<20 || m2.Memory.PSS <= 0 || m2.Memory.Cgroup <= 0:
			t.Errorf("memory = %+v, want RSS, PSS and cgroup usage", m2.Memory)
		case m2.Disk.WriteBytes < m1.Disk.WriteBytes+256<<10 || m2.Disk.WriteOps <= m1.Disk.WriteOps:
			t.Errorf("disk writes %+v then %+v, want 256 KiB more", m1.Disk, m2.Disk)
		case m2.Net == nil || m2.Net.RxBytes <= m1.Net.RxBytes || m2.Net.TxBytes <= m1.Net.TxBytes:
			t.Errorf("net %+v then %+v, want both ways growing (the SSH session)", m1.Net, m2.Net)
		case m2.Guest == nil:
			t.Errorf("no guest metrics: %s", m2.GuestError)
		case m2.Guest.MemTotal < 256<<20 || m2.Guest.MemTotal > int64(smolvm.DefaultMemoryMiB)<<20 || m2.Guest.MemAvailable <= 0:
			t.Errorf("guest memory = %+v", *m2.Guest)
		case m2.Limits != lim:
			t.Errorf("metrics limits = %+v, want %+v", m2.Limits, lim)
		}
	})
	t.Run("hostile meminfo", func(t *testing.T) {
		// The parser's cases are in TestParseGuestMeminfo; these check
		// that a crafted file in a real guest reaches it and no further.
		for name, content := range map[string]string{
			"huge line": "MemTotal: " + strings.Repeat("9", 4000) + " kB\nMemAvailable: 1 kB\n",
			"too big":   strings.Repeat("Junk: 1 kB\n", 4000),
			"lies":      "MemTotal: 1 kB\nMemAvailable: 999999999 kB\n",
		} {
			t.Run(name, func(t *testing.T) {
				if _, err := vm.WriteFile(ctx, "/root/fake-meminfo", strings.NewReader(content), 0o644); err != nil {
					t.Fatal(err)
				}
				run(t, ctx, vm, "mount --bind /root/fake-meminfo /proc/meminfo")
				defer run(t, ctx, vm, "umount /proc/meminfo")
				m, err := vm.Metrics(ctx)
				if err != nil {
					t.Fatalf("a lying guest made Metrics fail: %v", err)
				}
				if m.Guest != nil || !strings.Contains(m.GuestError, "meminfo") {
					t.Errorf("guest = %+v, error %q: want the crafted file refused", m.Guest, m.GuestError)
				}
				if m.Memory.RSS <= 0 {
					t.Errorf("host-side memory lost: %+v", m.Memory)
				}
			})
		}
	})
	t.Run("stop and start", func(t *testing.T) {
		tap := vm.Info().Network.TAP
		shaped := func() bool { return slices.Contains(network.ShapedTAPs(), tap) }
		if !shaped() { // set again for the stop to remove
			lim.NetBPS = 512 << 10
			if err := vm.SetLimits(ctx, lim); err != nil {
				t.Fatal(err)
			}
		}
		if !shaped() {
			t.Fatalf("no net limit rule for %s", tap)
		}
		dirs := cgroupDirs(t)
		if err := vm.Stop(ctx, 0); err != nil {
			t.Fatal(err)
		}
		for _, d := range dirs {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left after stop: %v", d, err)
			}
		}
		if shaped() {
			t.Errorf("net limit rule of %s left after stop", tap)
		}
		// A boot at a fifth of a CPU under TCG would take minutes: the
		// restart gets a whole one (a limit changed while stopped).
		lim.CPU = 1
		if err := vm.SetLimits(ctx, lim); err != nil {
			t.Fatal(err)
		}
		startVM(t, ctx, vm)
		if q := quota(t); q != "100000" {
			t.Errorf("CPU quota = %s after a restart, want 100000", q)
		}
		if !shaped() {
			t.Errorf("no net limit rule for %s after a restart", tap)
		}
		atLeast(t, "dd after a restart", timed(t, dd), ddBytes, lim.DiskBPS)
	})
	var lastDirs []string // the VM's cgroup, for the checks after it is gone
	t.Run("memory ceiling", func(t *testing.T) {
		// A ceiling the guest can reach (set behind the validation's
		// back, which refuses one below the guest's RAM): filling its RAM
		// gets its QEMU killed by the kernel, and nothing else.
		m, err := vm.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ceiling := strconv.FormatInt(m.Memory.Cgroup+64<<20, 10)
		set := false
		lastDirs = cgroupDirs(t)
		for _, d := range lastDirs {
			for _, f := range []string{"memory.limit_in_bytes", "memory.max"} {
				if _, err := os.Stat(filepath.Join(d, f)); err == nil {
					if err := os.WriteFile(filepath.Join(d, f), []byte(ceiling), 0o644); err != nil {
						t.Fatal(err)
					}
					set = true
				}
			}
		}
		if !set {
			t.Fatal("no memory limit file in the VM's cgroup")
		}
		_, err = vm.Run(ctx, "mkdir -p /mnt/fill && mount -t tmpfs -o size=450m fill /mnt/fill && dd if=/dev/zero of=/mnt/fill/x bs=1M count=440")
		t.Logf("filling the guest's RAM under a ceiling of %s bytes: %v", ceiling, err)
		deadline := time.Now().Add(time.Minute)
		for vm.Status() != smolvm.StateError {
			if time.Now().After(deadline) {
				t.Fatalf("the VM still runs (%s) past its memory ceiling", vm.Status())
			}
			time.Sleep(100 * time.Millisecond) // polling for the state, bounded above
		}
		if info := vm.Info(); !strings.Contains(info.Error, "exited") {
			t.Errorf("error state says %q", info.Error)
		}
		for _, d := range lastDirs { // the look that found it dead released it
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left by a VM killed at its ceiling: %v", d, err)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		tap := vm.Info().Network.TAP
		shaped := func() bool { return slices.Contains(network.ShapedTAPs(), tap) }
		if err := vm.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		for _, d := range lastDirs {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left after delete: %v", d, err)
			}
		}
		if shaped() {
			t.Errorf("net limit rule of %s left after delete", tap)
		}
	})
}
