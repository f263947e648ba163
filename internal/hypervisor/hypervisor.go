// Package hypervisor defines what smolvm needs from a virtual machine
// monitor, and the process bookkeeping every backend shares.
package hypervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Spec is everything a backend needs to boot one VM.
type Spec struct {
	ID         string
	VCPUs      int
	MemoryMiB  int
	Kernel     string
	Initrd     string
	Cmdline    string
	Disk       string
	ConsoleLog string
	PIDFile    string
	// ControlSocket is where the monitor's control socket (QMP for QEMU)
	// listens; empty = none.
	ControlSocket string
	Net           NetSpec
	Mounts        []Mount
}

// Mount shares a host folder with the guest under a tag.
type Mount struct {
	Tag      string
	HostPath string
	ReadOnly bool
}

// NetSpec says how the guest's one network interface is connected.
type NetSpec struct {
	// TAP is the host TAP device; empty means QEMU user-mode networking.
	TAP string
	MAC string
	// Forwards are host-port forwards for user-mode networking.
	Forwards []Forward
	// Restrict cuts a user-mode guest off from the host and the outside;
	// forwards into it still work.
	Restrict bool
}

// Forward sends TCP connections to HostAddr:HostPort on to GuestPort.
type Forward struct {
	HostAddr  string
	HostPort  int
	GuestPort int
}

// Capabilities tell callers what a backend can do before they ask.
type Capabilities struct {
	Accelerated bool // hardware virtualization (KVM) rather than emulation
	UserNetwork bool // supports user-mode networking without root
}

// Backend starts VMs. A started VM runs in its own process, detached from
// the caller, so it outlives the process that created it.
type Backend interface {
	Name() string
	Capabilities() Capabilities
	// Start boots spec and returns the VM process id once the monitor runs.
	// ctx bounds the launch only, never the VM's life.
	Start(ctx context.Context, spec Spec) (pid int, err error)
	// ExtraCmdline is what the backend adds to the kernel command line on
	// this host (clock hints for emulation, say).
	ExtraCmdline() string
}

// Marker is the string a VM's process carries on its command line, so a
// recorded PID is checked to still be that VM and not a reused number.
func Marker(id string) string { return "smolvm-" + id }

// Alive reports whether pid is a live process whose command line carries
// the VM's marker. A zombie has an empty command line and counts as dead.
func Alive(pid int, id string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte(Marker(id)))
}

// Kill sends SIGKILL to the VM process and waits until it is gone.
func Kill(ctx context.Context, pid int, id string) error {
	if !Alive(pid, id) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill VM process %d: %w", pid, err)
	}
	return WaitExit(ctx, pid, id)
}

// WaitExit waits until the VM process is gone or ctx is done.
func WaitExit(ctx context.Context, pid int, id string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for Alive(pid, id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
