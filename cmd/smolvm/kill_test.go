package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// TestKilledCreate kills `smolvm create` with SIGKILL at moments spread
// over a whole create and boot. Each time the VM must end up either
// usable or not running at all, and delete must leave no QEMU behind: a
// QEMU whose launcher died before recording it is found by its name.
func TestKilledCreate(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir()}
	t.Cleanup(func() {
		c.run("delete", "--all")
		checkNoLeaks(t, c.home, nil)
	})
	// The image is built once, so the kills land in the create and boot.
	c.ok("run", "--", "true")
	// From before the state row exists to well into the boot.
	var delays []time.Duration
	for d := 10 * time.Millisecond; d < 260*time.Millisecond; d += 25 * time.Millisecond {
		delays = append(delays, d)
	}
	delays = append(delays, 400*time.Millisecond, 800*time.Millisecond)
	for i, d := range delays {
		id := fmt.Sprintf("k%d", i)
		t.Run(d.String(), func(t *testing.T) {
			c := c
			c.t = t
			cmd := exec.Command(c.bin, "create", "--name", id)
			cmd.Env = append(os.Environ(), "SMOLVM_HOME="+c.home)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(d)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()

			var vms []smolvm.VMInfo
			c.json(&vms, "list")
			var vm *smolvm.VMInfo
			for i := range vms {
				if vms[i].ID == id {
					vm = &vms[i]
				}
			}
			procs := qemuOf(c.home, id)
			if vm != nil {
				t.Logf("after the kill: %s, QEMU %v", vm.State, procs)
			}
			switch {
			case vm == nil:
				if len(procs) != 0 {
					t.Errorf("no VM %s listed, but QEMU runs for it: %v", id, procs)
				}
				return
			case vm.State == smolvm.StateRunning:
				if r := c.run("exec", "--timeout", "60s", id, "--", "true"); r.code != 0 {
					t.Errorf("VM listed as running is not usable: exit %d: %s", r.code, r.stderr)
				}
			default:
				if len(procs) != 0 {
					t.Errorf("VM %s is %s, but QEMU runs for it: %v", id, vm.State, procs)
				}
				c.ok("start", id)
				if r := c.run("exec", "--timeout", "60s", id, "--", "true"); r.code != 0 {
					t.Errorf("VM started after the kill is not usable: exit %d: %s", r.code, r.stderr)
				}
			}
			c.ok("delete", id)
			if procs := qemuOf(c.home, id); len(procs) != 0 {
				t.Errorf("delete reported VM %s removed, but its QEMU runs: %v", id, procs)
			}
		})
	}
}

// qemuOf lists the QEMU processes of VM id in home, by process name.
func qemuOf(home, id string) []string {
	var out []string
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			name, ok := strings.CutPrefix(arg, hypervisor.NameArg(""))
			if vmID, _, parsed := hypervisor.ParseName(name); ok && parsed && vmID == id && usesDir(filepath.Base(filepath.Dir(p)), home) {
				out = append(out, filepath.Base(filepath.Dir(p)))
			}
		}
	}
	return out
}
