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

// Spec is everything a backend needs to boot one VM. Paths are host paths;
// the backend decides how the monitor reaches them (QEMU gets inherited
// file descriptors, so the paths' directories need not be open to it).
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
	// ProcessLog receives the monitor's own stdout and stderr (device
	// errors, warnings).
	ProcessLog string
	// ControlSocket is where the monitor's control socket (QMP for QEMU)
	// listens; empty = none.
	ControlSocket string
	Net           NetSpec
	Mounts        []Mount
	// RunAs is the unprivileged identity the monitor runs as; nil runs it
	// as the caller. The files of the VM are handed over to it.
	RunAs *Credential
	// AgentSocket is where the host side of the guest agent's control
	// port (a virtio serial port named AgentPort) listens; empty = none.
	AgentSocket string
	// DiskBase, when set, makes Disk a copy-on-write overlay (qcow2) on
	// this read-only raw image: a clone's disk.
	DiskBase string
	// Restore, when set, starts the VM from a snapshot instead of booting.
	// The device topology (everything but paths, network and identity)
	// must be the snapshot's source's.
	Restore *SnapshotFiles
	// Cgroup, when set, is the control group the monitor runs in, joined
	// before the guest runs: v2 by the descriptor of its directory (the
	// process starts in it, clone3 CLONE_INTO_CGROUP), v1 by writing the
	// PID to each of CgroupProcs right after the process starts.
	CgroupDir   *os.File
	CgroupProcs []string
}

// AgentPort is the name of the guest agent's control port.
const AgentPort = "smolvm.agent"

// SnapshotFiles are the files of a memory snapshot.
type SnapshotFiles struct {
	// State is the device state (and, when Memory is empty, the RAM too).
	State string
	// Memory is the guest RAM as a sparse file; clones share it.
	Memory string
	// MemoryID names the RAM for sharing: clones of one snapshot map one
	// copy of it.
	MemoryID string
}

// Credential is a user and group a VM process runs as.
type Credential struct {
	UID, GID uint32
	// Groups are supplementary groups (e.g. the owner group of /dev/kvm).
	Groups []uint32
	// Own says the user is the VM's alone: its processes can be bounded
	// (RLIMIT_NPROC) without touching anyone else's.
	Own bool
}

// Process identifies a running VM process: its PID and its start time in
// clock ticks since boot (/proc/PID/stat field 22), so a PID the kernel
// hands to another process later is never mistaken for the VM.
type Process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
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
	// GuestForwards hand, in user-mode networking, each guest connection
	// to an address of the guest's network to a program of the host.
	GuestForwards []GuestForward
}

// GuestForward runs Argv for each TCP connection of the guest to Addr,
// with the connection as its stdin, stdout and stderr.
type GuestForward struct {
	Addr string // IPv4:port in the user-mode network
	Argv []string
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
	Snapshot    bool // implements Snapshotter; Spec.Restore works
}

// Backend starts VMs. A started VM runs in its own process, detached from
// the caller, so it outlives the process that created it.
type Backend interface {
	Name() string
	Capabilities() Capabilities
	// Start boots spec and returns the VM process once the monitor has set
	// the machine up (device errors are reported here). ctx bounds the
	// launch only, never the VM's life; if ctx ends first the process is
	// killed.
	Start(ctx context.Context, spec Spec) (Process, error)
	// ExtraCmdline is what the backend adds to the kernel command line on
	// this host (clock hints for emulation, say).
	ExtraCmdline() string
}

// Snapshotter captures a running VM's memory and device state.
type Snapshotter interface {
	// Snapshot stops the VM of process p (control socket control) and
	// writes its state to to.State and its RAM to to.Memory, or into the
	// state for a VM whose RAM is not its own to copy (a clone's: the files
	// returned then have no Memory). The VM stays stopped, so that the
	// caller can copy its disk to match; the caller resumes it.
	Snapshot(ctx context.Context, p Process, control string, to SnapshotFiles) (SnapshotFiles, error)
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

// Alive reports whether p is a live process with the VM's exact name as an
// argument and, when p.Start is known, the same start time. A zombie has
// an empty command line and counts as dead.
func Alive(p Process, name string) bool {
	if p.PID <= 0 || name == "" {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil || !hasArg(b, NameArg(name)) {
		return false
	}
	if p.Start == 0 {
		return true
	}
	start, err := StartTime(p.PID)
	return err == nil && start == p.Start
}

func hasArg(cmdline []byte, arg string) bool {
	for _, a := range bytes.Split(cmdline, []byte{0}) {
		if string(a) == arg {
			return true
		}
	}
	return false
}

// StartTime reads when pid started, in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64) // field 22 overall
}

// Find looks for a live process carrying the VM's name, whatever its PID:
// a process whose launcher was killed before it could record it.
func Find(name string) (Process, bool) {
	want := NameArg(name)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !hasArg(b, want) {
			continue
		}
		start, err := StartTime(pid)
		if err != nil {
			continue
		}
		return Process{PID: pid, Start: start}, true
	}
	return Process{}, false
}

// Kill sends SIGKILL to the VM process and waits until it is gone.
func Kill(ctx context.Context, p Process, name string) error {
	if !Alive(p, name) {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill VM process %d: %w", p.PID, err)
	}
	return WaitExit(ctx, p, name)
}

// KillByName kills the VM's process wherever it is: the recorded one, and
// any other carrying the name (a launch whose launcher died before it
// recorded the PID).
func KillByName(ctx context.Context, p Process, name string) error {
	if err := Kill(ctx, p, name); err != nil {
		return err
	}
	for {
		other, ok := Find(name)
		if !ok {
			return nil
		}
		if err := Kill(ctx, other, name); err != nil {
			return err
		}
	}
}

// WaitExit waits until the VM process is gone or ctx is done. Gone means
// it has let go of its files too: a process loses its command line (so
// Alive says no) before the kernel closes its files, and a share or disk
// it held is only free once it is a zombie or reaped.
func WaitExit(ctx context.Context, p Process, name string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	if !Alive(p, name) {
		return nil
	}
	if p.Start == 0 {
		p.Start, _ = StartTime(p.PID)
	}
	for running(p) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// OpenFiles lists the paths of the files pid has open.
func OpenFiles(pid int) []string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(dir + e.Name()); err == nil {
			out = append(out, target)
		}
	}
	return out
}

// running reports whether p (with its start time) exists and is not yet a
// zombie.
func running(p Process) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	if b[i+2] == 'Z' || b[i+2] == 'X' {
		return false
	}
	start, err := StartTime(p.PID)
	return err == nil && (p.Start == 0 || start == p.Start)
}
