// Package qemu runs VMs with qemu-system-x86_64: KVM where /dev/kvm works,
// software emulation (TCG) elsewhere.
package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
)

// ErrNotInstalled is returned when no qemu-system-x86_64 binary is found.
var ErrNotInstalled = errors.New("qemu-system-x86_64 not found (install it: apt-get install qemu-system-x86)")

// QEMU is the QEMU backend.
type QEMU struct {
	Binary  string // path of qemu-system-x86_64
	KVM     bool   // use KVM; false = TCG
	TSCkHz  int    // host TSC frequency for TCG guests, 0 if unknown
	Machine string // "microvm" (default) or "q35"
}

var _ hypervisor.Backend = (*QEMU)(nil)

// New finds QEMU and probes whether KVM can be used on this host.
func New() (*QEMU, error) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, ErrNotInstalled
	}
	q := &QEMU{Binary: bin, KVM: KVMUsable(), Machine: "microvm"}
	if !q.KVM {
		q.TSCkHz = hostTSCkHz()
	}
	return q, nil
}

// Name implements hypervisor.Backend.
func (q *QEMU) Name() string {
	if q.KVM {
		return "qemu-kvm"
	}
	return "qemu-tcg"
}

// Capabilities implements hypervisor.Backend.
func (q *QEMU) Capabilities() hypervisor.Capabilities {
	return hypervisor.Capabilities{Accelerated: q.KVM, UserNetwork: true, Snapshot: true}
}

// ExtraCmdline implements hypervisor.Backend. Under TCG the microvm
// machine hangs in a sizeable share of boots while the kernel calibrates
// its clock; telling it the TSC frequency skips that calibration.
func (q *QEMU) ExtraCmdline() string {
	if !q.KVM && q.TSCkHz > 0 {
		return "tsc_early_khz=" + strconv.Itoa(q.TSCkHz)
	}
	return ""
}

// Args returns QEMU's command line for spec. It is a pure function so the
// exact command line is covered by golden tests.
func (q *QEMU) Args(spec hypervisor.Spec) []string { return q.args(launchSpec{Spec: spec}) }

// launchSpec is a spec as Start hands it to QEMU: the TAP device and the
// QMP socket as inherited descriptors (0 = by name).
type launchSpec struct {
	hypervisor.Spec
	tapFD, qmpFD, agentFD int
	baseFD                int // the snapshot disk, as fd set 1
	// memory is the path QEMU maps a restored VM's RAM from (a sealed
	// memfd every clone of the snapshot shares); empty = a memfd of its own.
	memory string
}

// sandbox is QEMU's seccomp filter: no obsolete system calls, no setuid
// and friends, no fork/exec, no scheduler or resource changes.
const sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// sandboxSpawning is the filter of a QEMU that runs programs for guestfwd
// (a user-mode VM's egress relay): fork and exec allowed, and the
// set*id family, as libslirp's child calls setsid; the rest as sandbox.
// smolvm never runs QEMU as root, so a set*id call of an unprivileged
// QEMU can only fail, and what it starts inherits the filter and
// no_new_privs (setuid bits do nothing), as QEMU's user.
const sandboxSpawning = "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"

func sandboxFor(spec hypervisor.Spec) string {
	if spec.Net.TAP == "" && len(spec.Net.GuestForwards) > 0 {
		return sandboxSpawning
	}
	return sandbox
}

// optValue escapes a value for QEMU's comma-separated options, where a
// comma in a path would otherwise start a new option.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func (q *QEMU) args(spec launchSpec) []string {
	machine, dev := "microvm", "device"
	if q.Machine == "q35" {
		machine, dev = "q35", "pci"
	}
	accel, cpu := "tcg", "max"
	if q.KVM {
		accel, cpu = "kvm", "host"
	}
	cmdline := spec.Cmdline
	if extra := q.ExtraCmdline(); extra != "" {
		cmdline += " " + extra
	}
	// RAM is a memfd shared with no one but its own QEMU (share=on), so a
	// snapshot can copy it aside and skip it in the migration stream
	// (x-ignore-shared). A restored VM maps its snapshot's RAM privately:
	// pages are copied only when it writes them.
	mem := "memory-backend-memfd,id=mem,size=" + strconv.Itoa(spec.MemoryMiB) + "M,share=on"
	if spec.memory != "" {
		mem = "memory-backend-file,id=mem,size=" + strconv.Itoa(spec.MemoryMiB) + "M,share=off,mem-path=" + optValue(spec.memory)
	}
	args := []string{
		"-name", hypervisor.NameArg(spec.Name),
		"-machine", machine + ",memory-backend=mem",
		"-object", mem,
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(spec.VCPUs),
		"-m", strconv.Itoa(spec.MemoryMiB) + "M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-sandbox", sandboxFor(spec.Spec),
		"-kernel", spec.Kernel,
		"-append", cmdline,
		"-chardev", "file,id=" + ConsoleChardev + ",path=" + optValue(spec.ConsoleLog),
		"-serial", "chardev:" + ConsoleChardev,
	}
	if spec.baseFD > 0 {
		args = append(args, "-add-fd", "fd="+strconv.Itoa(spec.baseFD)+",set=1")
	}
	if spec.DiskBase == "" {
		args = append(args, "-drive", "id=root,file="+optValue(spec.Disk)+",format=raw,if=none,discard=unmap")
	} else {
		// The overlay's backing file is given here, not read from its
		// header: QEMU reaches files only through its descriptors.
		args = append(args,
			"-blockdev", "driver=file,node-name=base-file,filename="+optValue(spec.DiskBase)+",read-only=on",
			"-blockdev", "driver=raw,node-name=base,file=base-file,read-only=on",
			"-blockdev", "driver=file,node-name=top-file,filename="+optValue(spec.Disk)+",discard=unmap",
			"-blockdev", "driver=qcow2,node-name=root,file=top-file,backing=base,discard=unmap")
	}
	args = append(args, "-device", "virtio-blk-"+dev+",drive=root")
	for i, m := range spec.Mounts {
		// Mapped: the guest's owners, modes, device nodes and symlinks are
		// metadata QEMU keeps beside plain host files (at fmode 0600, dmode
		// 0700, owned by QEMU's user). With "none" or "passthrough" they
		// are real, and a guest root could leave a setuid-root program or
		// a /dev/mem node for a host user to run or open.
		model := "mapped-xattr"
		if m.MappedFile {
			model = "mapped-file"
		}
		fsdev := fmt.Sprintf("local,id=fs%d,path=%s,security_model=%s", i, optValue(m.HostPath), model)
		if m.ReadOnly {
			fsdev += ",readonly=on"
		}
		args = append(args, "-fsdev", fsdev, "-device", fmt.Sprintf("virtio-9p-%s,fsdev=fs%d,mount_tag=%s", dev, i, m.Tag))
	}
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	switch {
	case spec.tapFD > 0:
		args = append(args, "-netdev", "tap,id=net0,fd="+strconv.Itoa(spec.tapFD))
	case spec.Net.TAP != "":
		args = append(args, "-netdev", "tap,id=net0,ifname="+optValue(spec.Net.TAP)+",script=no,downscript=no")
	default:
		// Always restricted: slirp maps
		// 10.0.2.2 (and every other address of its network it does not
		// serve itself) to the host's 127.0.0.1, so an unrestricted guest
		// reaches every loopback service of the host, other VMs' forwards
		// included. libslirp can turn that off (disable_host_loopback), but
		// QEMU 7.2's -netdev user has no option for it. restrict=on keeps
		// hostfwd (host to guest) working and gives the guest no egress.
		netdev := "user,id=net0,restrict=on"
		for _, f := range spec.Net.Forwards {
			netdev += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", f.HostAddr, f.HostPort, f.GuestPort)
		}
		for _, g := range spec.Net.GuestForwards {
			// QEMU runs the command for each connection, split by
			// g_shell_parse_argv: each word single-quoted.
			words := make([]string, len(g.Argv))
			for i, w := range g.Argv {
				words[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
			}
			netdev += ",guestfwd=tcp:" + g.Addr + "-cmd:" + optValue(strings.Join(words, " "))
		}
		args = append(args, "-netdev", netdev)
	}
	netdevice := "virtio-net-" + dev + ",netdev=net0"
	if spec.Net.MAC != "" {
		netdevice += ",mac=" + spec.Net.MAC
	}
	args = append(args, "-device", netdevice)
	if spec.agentFD > 0 || spec.AgentSocket != "" {
		sock := "socket,id=agent,server=on,wait=off,"
		if spec.agentFD > 0 {
			sock += "fd=" + strconv.Itoa(spec.agentFD)
		} else {
			sock += "path=" + optValue(spec.AgentSocket)
		}
		args = append(args, "-device", "virtio-serial-"+dev, "-chardev", sock,
			"-device", "virtserialport,chardev=agent,name="+hypervisor.AgentPort)
	}
	if spec.Restore != nil {
		args = append(args, "-incoming", "defer")
	}
	switch {
	case spec.qmpFD > 0:
		args = append(args, "-chardev", "socket,id=qmp,fd="+strconv.Itoa(spec.qmpFD)+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	case spec.ControlSocket != "":
		args = append(args, "-chardev", "socket,id=qmp,path="+optValue(spec.ControlSocket)+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	}
	return args
}

// AccelEnv overrides the accelerator choice: "kvm", "tcg" or "auto".
const AccelEnv = "SMOLVM_ACCEL"

// KVMUsable reports whether QEMU can run a stock kernel under KVM here:
// KVM_CREATE_VM must work, and the KVM must be the hardware one (kvm_intel
// or kvm_amd). Some sandboxes offer /dev/kvm through kvm-pvm, which creates
// VMs but cannot run an ordinary guest kernel.
func KVMUsable() bool {
	switch os.Getenv(AccelEnv) {
	case "kvm":
		return true
	case "tcg":
		return false
	}
	hw := false
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			hw = true
		}
	}
	if !hw {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	const kvmCreateVM = 0xAE01
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return false
	}
	unix.Close(int(fd))
	return true
}

// hostTSCkHz reads the host CPU frequency, which TCG guests' TSC runs at.
func hostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(key) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
