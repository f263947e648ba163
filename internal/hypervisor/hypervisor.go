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
	"strings"
	"syscall"
	"time"
)

// Spec is everything a backend needs to boot one VM.
type Spec struct {
	ID string
	// Name is the VM's host-unique process name (see Name); the monitor
	// carries it on its command line so the process can be recognised.
	Name       string
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
	// MappedFile keeps the guest's file metadata in files inside the share
	// instead of in user xattrs, for host filesystems without them.
	MappedFile bool
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

// NamePrefix starts every VM process name.
const NamePrefix = "smolvm-"

// Name is the host-unique name of a VM's process: ids are unique only
// within one state directory, so the name also carries the VM's instance,
// a random token made when the VM was created. Host-global resources (the
// process, TAP device, firewall rules) are named after it, never after the
// id alone.
func Name(id, instance string) string { return NamePrefix + instance + "-" + id }

// ParseName splits a process name made by Name.
func ParseName(name string) (id, instance string, ok bool) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return "", "", false
	}
	instance, id, ok = strings.Cut(rest, "-")
	return id, instance, ok && instance != "" && id != ""
}

// NameArg is the command-line argument that carries name.
func NameArg(name string) string { return "guest=" + name }

// Alive reports whether pid is a live process with the VM's exact name as
// an argument. A zombie has an empty command line and counts as dead.
func Alive(pid int, name string) bool {
	if pid <= 0 || name == "" {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	want := []byte(NameArg(name))
	for _, arg := range bytes.Split(b, []byte{0}) {
		if bytes.Equal(arg, want) {
			return true
		}
	}
	return false
}

// Kill sends SIGKILL to the VM process and waits until it is gone.
func Kill(ctx context.Context, pid int, name string) error {
	if !Alive(pid, name) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill VM process %d: %w", pid, err)
	}
	return WaitExit(ctx, pid, name)
}

// WaitExit waits until the VM process is gone or ctx is done.
func WaitExit(ctx context.Context, pid int, name string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for Alive(pid, name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
