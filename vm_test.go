package smolvm_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// TestAutoConfig is MISSION §1's first example: a default VM runs uname.
func TestAutoConfig(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	if got := vm.Status(); got != smolvm.StateCreated {
		t.Fatalf("status before start = %s, want created", got)
	}
	startVM(t, ctx, vm)
	if !vm.CanRunCommands(ctx) {
		t.Fatal("CanRunCommands = false on a started VM")
	}
	res := run(t, ctx, vm, "uname -a")
	if !res.OK() || !strings.HasPrefix(res.Stdout, "Linux "+vm.ID()+" ") {
		t.Fatalf("uname -a = %+v, want Linux with hostname %s", res, vm.ID())
	}
	if res := run(t, ctx, vm, "cat /etc/os-release"); !strings.Contains(res.Stdout, "ID=alpine") {
		t.Fatalf("os-release = %q, want Alpine", res.Stdout)
	}
	info := vm.Info()
	if info.State != smolvm.StateRunning || vm.IP() == "" || info.PID == 0 {
		t.Fatalf("info = %+v", info)
	}
	if info.Config.VCPUs != 1 || info.Config.MemoryMiB != 512 || info.Config.DiskMiB != 512 {
		t.Fatalf("defaults = %+v, want 1 vCPU, 512 MiB, 512 MiB", info.Config)
	}
	if _, err := os.Stat(vm.DataDir()); err != nil {
		t.Fatalf("data dir: %v", err)
	}
	// A standard OpenSSH client works with the key and known_hosts smolvm
	// wrote, with strict host key checking.
	if ssh := lookPath("ssh"); ssh != "" && info.Network.Mode == "tap" {
		out, err := exec.CommandContext(ctx, ssh, "-i", vm.DataDir()+"/id_ed25519",
			"-o", "UserKnownHostsFile="+vm.DataDir()+"/known_hosts", "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "root@"+vm.IP(), "echo via-openssh; exit 5").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(string(out), "via-openssh") {
			t.Fatalf("openssh: %v: %s", err, out)
		}
		// And OpenSSH's scp (SFTP underneath) copies files in.
		local := filepath.Join(t.TempDir(), "f.txt")
		os.WriteFile(local, []byte("scp works\n"), 0o644)
		if out, err := exec.CommandContext(ctx, "scp", "-i", vm.DataDir()+"/id_ed25519",
			"-o", "UserKnownHostsFile="+vm.DataDir()+"/known_hosts", "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", local, "root@"+vm.IP()+":/tmp/f.txt").CombinedOutput(); err != nil {
			t.Fatalf("scp: %v: %s", err, out)
		}
		if got := run(t, ctx, vm, "cat /tmp/f.txt").Stdout; got != "scp works\n" {
			t.Fatalf("after scp: %q", got)
		}
	}
}

// TestCustomSizes checks memory and disk sizes from inside the guest.
func TestCustomSizes(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithMemory(1024), smolvm.WithDisk(1024))
	startVM(t, ctx, vm)
	mem := atoi(t, run(t, ctx, vm, "free -m | awk '/^Mem:/ {print $2}'").Stdout)
	if mem < 900 || mem > 1024 {
		t.Errorf("free -m total = %d MiB, want about 1024", mem)
	}
	disk := atoi(t, run(t, ctx, vm, "df -m / | awk 'NR==2 {print $2}'").Stdout)
	if disk < 900 || disk > 1024 {
		t.Errorf("df -m / total = %d MiB, want about 1024", disk)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// TestManualConfigLifecycle boots explicit kernel and rootfs files, stops
// and starts again, and checks the disk and env survive.
func TestManualConfigLifecycle(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	img, err := smolvm.DefaultImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm := newVM(t, ctx, smolvm.VMConfig{
		ID: "manual-vm", VCPUs: 2, MemoryMiB: 384, DiskMiB: 256,
		KernelPath: img.Kernel, RootfsPath: img.Rootfs, BootArgs: image.SSHBootArgs,
		Env: map[string]string{"GREETING": "hello world"},
	})
	startVM(t, ctx, vm)
	if got := run(t, ctx, vm, "nproc").Stdout; strings.TrimSpace(got) != "2" {
		t.Errorf("nproc = %q, want 2", got)
	}
	run(t, ctx, vm, "echo kept > /root/file && sync")
	if err := vm.Stop(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := vm.Status(); got != smolvm.StateStopped {
		t.Fatalf("status after stop = %s", got)
	}
	if _, err := vm.Run(ctx, "true"); !errors.Is(err, smolvm.ErrNotRunning) {
		t.Fatalf("run on stopped VM: %v, want ErrNotRunning", err)
	}
	startVM(t, ctx, vm)
	if got := run(t, ctx, vm, "cat /root/file; echo $GREETING").Stdout; got != "kept\nhello world\n" {
		t.Errorf("after restart got %q", got)
	}
}

// TestDeleteCleansUp checks that delete leaves no process, TAP, row or
// disk, and that RetainDiskOnDelete keeps the disk.
func TestDeleteCleansUp(t *testing.T) {
	for _, retain := range []bool{false, true} {
		t.Run("retain="+strconv.FormatBool(retain), func(t *testing.T) {
			ctx := testContext(t, 3*time.Minute)
			vm := newVM(t, ctx, smolvm.VMConfig{RetainDiskOnDelete: retain})
			startVM(t, ctx, vm)
			run(t, ctx, vm, "echo data > /root/f; sync")
			info := vm.Info()
			if err := vm.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(info.PID, 0); err == nil {
				if b, _ := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/cmdline"); strings.Contains(string(b), vm.ID()) {
					t.Errorf("process %d still running", info.PID)
				}
			}
			if info.Network.TAP != "" && network.TAPExists(info.Network.TAP) {
				t.Errorf("TAP %s still exists", info.Network.TAP)
			}
			if _, err := smolvm.FromID(ctx, vm.ID()); !errors.Is(err, smolvm.ErrNotFound) {
				t.Errorf("FromID after delete: %v, want ErrNotFound", err)
			}
			_, err := os.Stat(info.Disk)
			if retain && err != nil {
				t.Errorf("retained disk: %v", err)
			}
			if !retain && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("disk still there: %v", err)
			}
			os.RemoveAll(info.DataDir)
		})
	}
}

// TestScope checks With and Use: an owned VM is deleted at the end, a
// reconnected one only stopped.
func TestScope(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	var id string
	err := smolvm.With(ctx, smolvm.VMConfig{}, func(vm *smolvm.VM) error {
		id = vm.ID()
		_, err := vm.Run(ctx, "true")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := smolvm.FromID(ctx, id); !errors.Is(err, smolvm.ErrNotFound) {
		t.Fatalf("owned VM after With: %v, want ErrNotFound", err)
	}

	owner := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, owner)
	other, err := smolvm.FromID(ctx, owner.ID())
	if err != nil {
		t.Fatal(err)
	}
	if other.Owned() {
		t.Fatal("FromID handle claims ownership")
	}
	errFn := errors.New("from fn")
	err = smolvm.Use(ctx, other, func(vm *smolvm.VM) error {
		run(t, ctx, vm, "true")
		return errFn
	})
	if !errors.Is(err, errFn) {
		t.Fatalf("Use returned %v, want fn's error", err)
	}
	if err := owner.Refresh(ctx); err != nil {
		t.Fatalf("reconnected VM was deleted: %v", err)
	}
	if got := owner.Status(); got != smolvm.StateStopped {
		t.Fatalf("reconnected VM after Use: %s, want stopped", got)
	}
}

// TestFromIDOtherProcess reconnects from a second process: the CLI.
func TestFromIDOtherProcess(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, vm)
	run(t, ctx, vm, "echo from-first > /root/marker")
	out, err := exec.CommandContext(ctx, testEnv.bin, "exec", vm.ID(), "--", "cat /root/marker; exit 4").Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || string(out) != "from-first\n" {
		t.Fatalf("smolvm exec from another process: %q, %v", out, err)
	}
	// The reverse: a VM stopped by another process is seen as stopped.
	if out, err := exec.CommandContext(ctx, testEnv.bin, "stop", vm.ID()).CombinedOutput(); err != nil {
		t.Fatalf("smolvm stop: %v: %s", err, out)
	}
	if err := vm.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := vm.Status(); got != smolvm.StateStopped {
		t.Fatalf("status after stop by another process = %s", got)
	}
}

// TestCommands covers command results on one running VM.
func TestCommands(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{Env: map[string]string{"FROM_CONFIG": "c1"}})
	startVM(t, ctx, vm)

	t.Run("results", func(t *testing.T) {
		tests := []struct {
			cmd            string
			stdin          string
			stdout, stderr string
			code           int
		}{
			{cmd: "true", code: 0},
			{cmd: "exit 3", code: 3},
			{cmd: "exit 255", code: 255},
			{cmd: "echo out; echo err >&2; exit 1", stdout: "out\n", stderr: "err\n", code: 1},
			{cmd: "tr a-z A-Z", stdin: "shout", stdout: "SHOUT"},
			{cmd: "kill -9 $$", code: 128 + 9},
			{cmd: "no-such-command", code: 127, stderr: "/bin/sh: no-such-command: not found\n"},
		}
		for _, tt := range tests {
			var opts []smolvm.RunOption
			if tt.stdin != "" {
				opts = append(opts, smolvm.WithStdin(strings.NewReader(tt.stdin)))
			}
			res := run(t, ctx, vm, tt.cmd, opts...)
			if res.ExitCode != tt.code || res.Stdout != tt.stdout || res.Stderr != tt.stderr {
				t.Errorf("%q = %+v, want stdout %q stderr %q code %d", tt.cmd, res, tt.stdout, tt.stderr, tt.code)
			}
			if res.OK() != (tt.code == 0) {
				t.Errorf("%q: OK() = %v", tt.cmd, res.OK())
			}
		}
		if got := (&smolvm.CommandResult{Stderr: "e"}).Output(); got != "e" {
			t.Errorf("Output() falls back to stderr: got %q", got)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		_, err := vm.Run(ctx, "sleep 60", smolvm.WithTimeout(time.Second))
		var te *smolvm.TimeoutError
		if !errors.As(err, &te) || !errors.Is(err, smolvm.ErrTimeout) {
			t.Fatalf("got %v, want *TimeoutError", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("timeout took %v", d)
		}
		// The command was killed in the guest, and the VM still answers.
		if res := run(t, ctx, vm, "pgrep -x sleep || echo none"); res.Stdout != "none\n" {
			t.Fatalf("sleep still running: %q", res.Stdout)
		}
	})

	t.Run("streaming", func(t *testing.T) {
		var out, errb strings.Builder
		code, err := vm.Exec(ctx, "for i in 1 2 3; do echo $i; done; echo e >&2", smolvm.ExecOptions{Stdout: &out, Stderr: &errb})
		if err != nil || code != 0 || out.String() != "1\n2\n3\n" || errb.String() != "e\n" {
			t.Fatalf("exec = %d, %v, %q, %q", code, err, out.String(), errb.String())
		}
	})

	t.Run("env", func(t *testing.T) {
		if got := run(t, ctx, vm, "echo $FROM_CONFIG").Stdout; got != "c1\n" {
			t.Fatalf("config env: %q", got)
		}
		if _, err := vm.SetEnv(ctx, map[string]string{"API_KEY": "s3cr'et value", "N": "1"}); err != nil {
			t.Fatal(err)
		}
		if got := run(t, ctx, vm, `echo "$API_KEY/$N"`).Stdout; got != "s3cr'et value/1\n" {
			t.Fatalf("after SetEnv: %q", got)
		}
		if got := run(t, ctx, vm, `echo $N`, smolvm.WithRunEnv(map[string]string{"N": "2"})).Stdout; got != "2\n" {
			t.Fatalf("per-command env: %q", got)
		}
		env, err := vm.UnsetEnv(ctx, "N")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := env["N"]; ok || env["API_KEY"] != "s3cr'et value" || env["FROM_CONFIG"] != "c1" {
			t.Fatalf("env after unset = %v", env)
		}
		if got, err := vm.Env(ctx); err != nil || len(got) != 2 {
			t.Fatalf("Env() = %v, %v", got, err)
		}
		if _, err := vm.SetEnv(ctx, map[string]string{"1BAD": "x"}); !errors.Is(err, smolvm.ErrInvalid) {
			t.Fatalf("bad name: %v, want ErrInvalid", err)
		}
	})
}

// TestValidation feeds bad input for every setting and checks the error is
// clear and nothing was created.
func TestValidation(t *testing.T) {
	ctx := testContext(t, time.Minute)
	home := t.TempDir()
	kernel := home + "/kernel"
	os.WriteFile(kernel, []byte("x"), 0o644)
	// Files that look right at the bytes Validate reads.
	bz, ext := make([]byte, 4096), make([]byte, 4096)
	copy(bz[0x202:], "HdrS")
	copy(ext[1080:], "\x53\xef")
	os.WriteFile(home+"/bzImage", bz, 0o644)
	os.WriteFile(home+"/rootfs.ext4", ext, 0o644)
	tests := []struct {
		name string
		cfg  smolvm.VMConfig
		want string
	}{
		{"id with slash", smolvm.VMConfig{ID: "../etc"}, "invalid id"},
		{"id too long", smolvm.VMConfig{ID: strings.Repeat("a", 64)}, "invalid id"},
		{"negative cpus", smolvm.VMConfig{VCPUs: -1}, "invalid vcpus"},
		{"too many cpus", smolvm.VMConfig{VCPUs: 1000}, "invalid vcpus"},
		{"tiny memory", smolvm.VMConfig{MemoryMiB: 16}, "invalid memory"},
		{"tiny disk", smolvm.VMConfig{DiskMiB: 8}, "invalid disk"},
		{"missing kernel", smolvm.VMConfig{KernelPath: home + "/nope", RootfsPath: kernel}, "invalid kernel path"},
		{"missing rootfs", smolvm.VMConfig{KernelPath: kernel, RootfsPath: home + "/nope"}, "invalid rootfs path"},
		{"kernel without rootfs", smolvm.VMConfig{KernelPath: kernel}, "invalid kernel/rootfs"},
		{"rootfs is a dir", smolvm.VMConfig{KernelPath: kernel, RootfsPath: home}, "not a regular file"},
		{"kernel is no kernel", smolvm.VMConfig{KernelPath: kernel, RootfsPath: home + "/rootfs.ext4"}, "not a Linux kernel"},
		{"rootfs is no ext4", smolvm.VMConfig{KernelPath: home + "/bzImage", RootfsPath: kernel}, "not an ext2/3/4"},
		{"missing initrd", smolvm.VMConfig{KernelPath: kernel, RootfsPath: kernel, InitrdPath: home + "/nope"}, "invalid initrd path"},
		{"bad env name", smolvm.VMConfig{Env: map[string]string{"A-B": "1"}}, "invalid env name"},
		{"negative timeout", smolvm.VMConfig{BootTimeout: -time.Second}, "invalid boot timeout"},
		{"image and kernel", smolvm.VMConfig{Image: "x", KernelPath: kernel, RootfsPath: kernel}, "invalid image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := smolvm.NewFromConfig(ctx, tt.cfg, smolvm.WithHome(home))
			if err == nil {
				vm.Delete(ctx)
				t.Fatal("no error")
			}
			if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
	t.Run("network mode", func(t *testing.T) {
		_, err := smolvm.New(ctx, smolvm.WithHome(home), smolvm.WithNetwork("carrier-pigeon"))
		if !errors.Is(err, smolvm.ErrInvalid) {
			t.Fatalf("got %v", err)
		}
	})
	if ents, _ := os.ReadDir(home + "/vms"); len(ents) != 0 {
		t.Fatalf("bad input left VM directories: %v", ents)
	}
	if vms, err := smolvm.List(ctx, smolvm.WithHome(home)); err != nil || len(vms) != 0 {
		t.Fatalf("bad input left rows: %v, %v", vms, err)
	}
}

func TestAlreadyExistsAndNotFound(t *testing.T) {
	ctx := testContext(t, time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{ID: "dup"})
	if _, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: vm.ID()}); !errors.Is(err, smolvm.ErrAlreadyExists) {
		t.Fatalf("second create: %v, want ErrAlreadyExists", err)
	}
	if _, err := os.Stat(vm.Info().Disk); err != nil {
		t.Fatalf("failed duplicate create touched the first VM: %v", err)
	}
	_, err := smolvm.FromID(ctx, "no-such-vm")
	var se *smolvm.Error
	if !errors.Is(err, smolvm.ErrNotFound) || !errors.As(err, &se) || se.VM != "no-such-vm" {
		t.Fatalf("FromID unknown: %v", err)
	}
}

// TestConcurrentVMs starts three VMs at once: distinct IPs, all answer.
func TestConcurrentVMs(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	const n = 3
	vms := make([]*smolvm.VM, n)
	for i := range vms {
		vms[i] = newVM(t, ctx, smolvm.VMConfig{})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = vm.Start(ctx); errs[i] != nil {
				return
			}
			res, err := vm.Run(ctx, "hostname")
			if err == nil && strings.TrimSpace(res.Stdout) != vm.ID() {
				err = errors.New("wrong hostname " + res.Stdout)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, vm := range vms {
		if errs[i] != nil {
			t.Errorf("vm %d: %v", i, errs[i])
		}
		if seen[vm.IP()] {
			t.Errorf("IP %s given twice", vm.IP())
		}
		seen[vm.IP()] = true
	}
}

// TestBootReliability boots the default machine ten times in a row: the
// microvm machine under TCG used to hang in a share of boots.
func TestBootReliability(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{BootTimeout: 45 * time.Second})
	for i := range 10 {
		start := time.Now()
		if err := vm.Start(ctx); err != nil {
			t.Fatalf("boot %d: %v", i+1, err)
		}
		if res := run(t, ctx, vm, "echo up"); res.Stdout != "up\n" {
			t.Fatalf("boot %d: %q", i+1, res.Stdout)
		}
		t.Logf("boot %d: %v", i+1, time.Since(start).Round(time.Millisecond))
		if err := vm.Stop(ctx, 5*time.Second); err != nil {
			t.Fatalf("stop %d: %v", i+1, err)
		}
	}
}

// TestKilledVM: a VM whose QEMU was killed is reported as error, never as
// running, and delete still removes its TAP.
func TestKilledVM(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, vm)
	info := vm.Info()
	if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for vm.Status() == smolvm.StateRunning && time.Now().Before(deadline) {
		if err := vm.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := vm.Status(); got != smolvm.StateError {
		t.Fatalf("status after SIGKILL = %s, want error", got)
	}
	vms, err := smolvm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.ID == vm.ID() && v.State == smolvm.StateRunning {
			t.Fatal("List reports the killed VM as running")
		}
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if info.Network.TAP != "" && network.TAPExists(info.Network.TAP) {
		t.Fatalf("TAP %s left after delete", info.Network.TAP)
	}
}

// TestStartTimeout: a boot that cannot finish in time returns a
// *TimeoutError naming the budget it had, whichever step it cut short
// (50 ms ends during QEMU's launch), and leaves no process or TAP behind.
func TestStartTimeout(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	for _, tc := range []struct {
		name   string
		config time.Duration // VMConfig.BootTimeout
		ctx    time.Duration // a deadline on Start's ctx
	}{
		{"config 300ms", 300 * time.Millisecond, 0},
		{"config 50ms", 50 * time.Millisecond, 0},
		{"ctx 50ms", 0, 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := newVM(t, ctx, smolvm.VMConfig{BootTimeout: tc.config})
			sctx := ctx
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				sctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			err := vm.Start(sctx)
			var te *smolvm.TimeoutError
			budget := max(tc.config, tc.ctx)
			if !errors.As(err, &te) || te.Timeout <= 0 || te.Timeout > budget {
				t.Fatalf("got %v, want a *TimeoutError after at most %s", err, budget)
			}
			if err := vm.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			info := vm.Info()
			if info.State == smolvm.StateRunning || info.PID != 0 {
				t.Fatalf("after a timed-out start: %+v", info)
			}
			if info.Network.TAP != "" && network.TAPExists(info.Network.TAP) {
				t.Fatalf("TAP %s left after a timed-out start", info.Network.TAP)
			}
			if p, ok := hypervisor.Find(info.Process); ok {
				t.Fatalf("QEMU %d left after a timed-out start", p.PID)
			}
		})
	}
}

func TestUserNetworking(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkUser))
	startVM(t, ctx, vm)
	info := vm.Info()
	if info.Network.Mode != "user" || vm.IP() != "127.0.0.1" || info.Network.Note == "" {
		t.Fatalf("network = %+v", info.Network)
	}
	if res := run(t, ctx, vm, "ip -4 addr show eth0 | grep -o 10.0.2.15"); res.Stdout != "10.0.2.15\n" {
		t.Fatalf("guest address: %q", res.Stdout)
	}
}

// TestConcurrentStartSameVM starts one VM from two handles at once, as two
// processes might: one QEMU must run, and both calls succeed.
func TestConcurrentStartSameVM(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	other, err := smolvm.FromID(ctx, vm.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, h := range []*smolvm.VM{vm, other} {
		wg.Go(func() { errs[i] = h.Start(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "\x00"+hypervisor.NameArg(vm.Info().Process)+"\x00") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d QEMU processes for one VM, want 1", n)
	}
	if res := run(t, ctx, other, "echo ok"); res.Stdout != "ok\n" {
		t.Fatalf("second handle: %q", res.Stdout)
	}
}
