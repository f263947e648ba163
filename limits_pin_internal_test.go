package smolvm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/hypervisor"
)

// TestAddToCgroupOnlyItsQEMU: the PID a VM's record holds may belong to
// another process by the time limits are set; that process must not be
// written into the VM's cgroup.
func TestAddToCgroupOnlyItsQEMU(t *testing.T) {
	name := hypervisor.NamePrefix + "deadbeef-pinned"
	// A live stranger: a process that is not this VM's QEMU.
	stranger := exec.Command("sleep", "60")
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stranger.Process.Kill(); stranger.Wait() })
	// An exited one, reaped: its PID is free for reuse.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	start, err := hypervisor.StartTime(stranger.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		p    hypervisor.Process
	}{
		{"another program", hypervisor.Process{PID: stranger.Process.Pid}},
		{"another program, start time recorded", hypervisor.Process{PID: stranger.Process.Pid, Start: start}},
		{"exited", hypervisor.Process{PID: gone.Process.Pid}},
		{"no pid", hypervisor.Process{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			v := &VM{id: "pinned", info: VMInfo{ID: "pinned", Process: name}}
			err := v.addToCgroup(cgroup.Group{Dirs: []string{dir}, V2: true}, tt.p)
			if !errors.Is(err, ErrNotRunning) {
				t.Errorf("err = %v, want ErrNotRunning", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup.procs was written (%v)", err)
			}
		})
	}
}
