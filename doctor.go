package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/agentbin"
	"github.com/smolvm/smolvm/internal/disk"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/initramfs"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/statedir"
)

// Check is one finding of Doctor: what was looked at, whether this host
// has it, and how to fix it when not.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Optional checks do not stop VMs from running when they fail; smolvm
	// falls back (software emulation, user-mode networking) and is slower
	// or less capable.
	Optional bool `json:"optional,omitempty"`
}

// Doctor checks what this host has and lacks for running VMs, with the
// settings opts give (state directory, agent binary, Alpine source). It
// starts nothing and changes nothing but a probe file in the state
// directory.
func Doctor(ctx context.Context, opts ...Option) []Check {
	s := newSettings(opts)
	return []Check{
		checkQEMU(ctx),
		checkKVM(),
		checkKernel(),
		checkTools(),
		checkTAP(),
		checkForwarding(),
		checkCgroups(),
		checkStateDir(s.home),
		checkAgent(s),
		checkKeeper(s),
		checkAlpine(s),
	}
}

func checkQEMU(ctx context.Context) Check {
	c := Check{Name: "qemu", Fix: "apt-get install qemu-system-x86"}
	q, err := qemu.New()
	if err != nil {
		c.Detail = "qemu-system-x86_64 not found on PATH"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, q.Binary, "--version").Output()
	if err != nil {
		c.Detail = fmt.Sprintf("%s does not run: %v", q.Binary, err)
		c.Fix = "reinstall it: apt-get install --reinstall qemu-system-x86"
		return c
	}
	version, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	c.OK, c.Detail, c.Fix = true, q.Binary+" ("+version+")", ""
	return c
}

func checkKVM() Check {
	c := Check{Name: "kvm", Optional: true}
	if qemu.KVMUsable() {
		c.OK, c.Detail = true, "KVM is usable: VMs run with hardware acceleration"
		if os.Getenv(qemu.AccelEnv) == "kvm" {
			c.Detail = "KVM forced by " + qemu.AccelEnv + "=kvm"
		}
		return c
	}
	const tcg = "; VMs run under software emulation (QEMU TCG): they work, but boot in seconds instead of a fraction of one and compute several times slower"
	switch _, kvmErr := os.Stat("/dev/kvm"); {
	case os.Getenv(qemu.AccelEnv) == "tcg":
		c.Detail = "software emulation forced by " + qemu.AccelEnv + "=tcg"
		c.Fix = "unset " + qemu.AccelEnv + " to use KVM where it works"
	case kvmErr != nil:
		c.Detail = "/dev/kvm is missing" + tcg
		c.Fix = "enable virtualization (VT-x/AMD-V) in the firmware or nested virtualization for this VM, then modprobe kvm_intel (or kvm_amd)"
	case !hardwareKVM():
		c.Detail = "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded (a paravirtual KVM cannot run a stock kernel)" + tcg
		c.Fix = "modprobe kvm_intel (or kvm_amd) on a host with hardware virtualization"
	default:
		c.Detail = "/dev/kvm cannot create a VM (no permission, or KVM is in use by another hypervisor)" + tcg
		c.Fix = "add your user to the kvm group (usermod -aG kvm $USER) or run as root"
	}
	return c
}

func hardwareKVM() bool {
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			return true
		}
	}
	return false
}

func checkKernel() Check {
	c := Check{Name: "kernel", Fix: "apt-get install linux-image-cloud-amd64 (or set " + image.KernelEnv + " to a bzImage)"}
	kernel, err := (&image.Builder{}).FindKernel()
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	release, err := initramfs.KernelRelease(kernel)
	if err != nil {
		c.Detail = fmt.Sprintf("%s cannot be read: %v", kernel, err)
		if errors.Is(err, os.ErrPermission) {
			c.Fix = "run as root, or make it readable: chmod 0644 " + kernel
		}
		return c
	}
	c.OK, c.Detail, c.Fix = true, kernel+" ("+release+")", ""
	if _, err := os.Stat(filepath.Join("/lib/modules", release, "modules.dep")); err != nil {
		c.Detail += "; no /lib/modules/" + release + ": only drivers built into the kernel are available"
	}
	return c
}

func checkTools() Check {
	c := Check{Name: "e2fsprogs", Fix: "apt-get install e2fsprogs"}
	var missing, found []string
	for _, tool := range []string{"mke2fs", "resize2fs"} {
		if p := disk.Tool(tool); !filepath.IsAbs(p) {
			missing = append(missing, tool)
		} else {
			found = append(found, p)
		}
	}
	if len(missing) > 0 {
		c.Detail = strings.Join(missing, " and ") + " not found on PATH, in /usr/sbin or /sbin (images and disks are made with them)"
		return c
	}
	c.OK, c.Detail, c.Fix = true, strings.Join(found, ", "), ""
	return c
}

func checkTAP() Check {
	c := Check{Name: "tap networking", Optional: true}
	if network.CanUseTAP() {
		c.OK, c.Detail = true, "root and /dev/net/tun: each VM gets its own TAP device and address"
		return c
	}
	const fallback = "; VMs use QEMU user-mode networking instead (SSH through a forwarded port on 127.0.0.1, no inbound address)"
	if os.Geteuid() != 0 {
		c.Detail = "not running as root" + fallback
		c.Fix = "run smolvm as root (sudo) for TAP networking"
	} else {
		c.Detail = "/dev/net/tun is missing" + fallback
		c.Fix = "modprobe tun (in a container: pass --device /dev/net/tun)"
	}
	return c
}

// checkForwarding says what smolvm changed in the host's IPv4 forwarding
// (the record EnsureBase keeps) and what was on before it.
func checkForwarding() Check {
	c := Check{Name: "ip forwarding", OK: true, Optional: true}
	rec, err := network.ReadForwardingRecord(network.DefaultForwardingRecord)
	if err != nil {
		c.OK, c.Detail = false, err.Error()
		c.Fix = "remove " + network.DefaultForwardingRecord + " once no TAP VM runs, and check net.ipv4.conf.*.forwarding by hand"
		return c
	}
	global := "unknown"
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil {
		global = strings.TrimSpace(string(b))
	}
	if len(rec.Interfaces) == 0 {
		c.Detail = "smolvm changed no forwarding setting; net.ipv4.ip_forward=" + global
		if global == "1" {
			c.Detail += " was set by something else (the host forwards between all its interfaces; smolvm's table still keeps its VMs apart)"
		} else {
			c.Detail += "; TAP VMs turn forwarding on only on their TAPs and on the default route's interface while they run"
		}
		return c
	}
	var parts []string
	for _, ch := range rec.Interfaces {
		parts = append(parts, fmt.Sprintf("net.ipv4.conf.%s.forwarding (was %s, since %s)", ch.Name, ch.Previous, ch.At.Format(time.RFC3339)))
	}
	c.Detail = "smolvm turned on " + strings.Join(parts, ", ") +
		"; table inet smolvm forwards what arrives there only to VMs, and the settings go back when the last TAP VM stops (record: " + network.DefaultForwardingRecord + ")"
	if rules, err := network.NewFirewall(0).Rules(); err == nil && len(rules) == 0 {
		c.OK = false
		c.Detail += "; but no VM has rules left, so this is a leftover"
		var undo []string
		for _, ch := range rec.Interfaces {
			undo = append(undo, fmt.Sprintf("sysctl -w net.ipv4.conf.%s.forwarding=%s", strings.ReplaceAll(ch.Name, ".", "/"), ch.Previous))
		}
		c.Fix = "starting and stopping any TAP VM puts it back; or by hand: " + strings.Join(undo, "; ") + "; rm " + network.DefaultForwardingRecord
	}
	return c
}

func checkStateDir(home string) Check {
	c := Check{Name: "state dir", Fix: "pass --home (or set SMOLVM_HOME) to a writable directory"}
	if err := statedir.Ensure(home); err != nil {
		c.Detail = err.Error()
		return c
	}
	f, err := os.CreateTemp(home, ".doctor-")
	if err != nil {
		c.Detail = fmt.Sprintf("%s is not writable: %v", home, err)
		return c
	}
	f.Close()
	os.Remove(f.Name())
	c.OK, c.Detail, c.Fix = true, home+" is writable", ""
	return c
}

func checkAgent(s settings) Check {
	c := Check{Name: "agent", Fix: "set SMOLVM_AGENT to a static smolvm-agent binary (./scripts/build.sh makes bin/smolvm-agent), or install Go so smolvm builds one"}
	path := newBuilder(s).AgentPath()
	if path == "" {
		// None configured: the first create builds one, if it can.
		what, err := agentbin.Describe(agentbin.DefaultCacheDir(s.home), "")
		if err != nil {
			c.Detail = "no agent configured, and none can be built: " + err.Error()
			return c
		}
		c.OK, c.Detail, c.Fix = true, "none configured: "+what, ""
		return c
	}
	if _, err := image.ReadAgent(path); err != nil {
		c.Detail = err.Error()
		return c
	}
	c.OK, c.Detail, c.Fix = true, path+" is a static x86-64 binary (it becomes the guest's init)", ""
	return c
}

// checkAlpine says where the default image comes from; it fails only when
// the source is a local path that does not exist.
func checkAlpine(s settings) Check {
	c := Check{Name: "default image", OK: true}
	b := &image.Builder{CacheDir: s.home}
	if img, err := b.Get(image.DefaultName); err == nil {
		c.Detail = "built: " + img.Rootfs
		return c
	}
	src := s.alpineSource
	if src == "" {
		src = os.Getenv(image.AlpineSourceEnv)
	}
	switch {
	case src == "":
		c.Detail = "not built yet; the Alpine minirootfs is downloaded from " + image.AlpineMirror + " on first use"
		c.Fix = "offline? set " + image.AlpineSourceEnv + " to a local copy of " + image.AlpineFile + " or a mirror URL"
	case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
		c.Detail = "not built yet; the Alpine minirootfs is downloaded from " + src + " on first use"
	default:
		local := strings.TrimPrefix(src, "file://")
		if _, err := os.Stat(local); err != nil {
			c.OK = false
			c.Detail = fmt.Sprintf("Alpine source %s: %v", local, err)
			c.Fix = "point " + image.AlpineSourceEnv + " (or --alpine-source) at " + image.AlpineFile + " or the directory holding it"
			return c
		}
		c.Detail = "not built yet; built from " + local + " on first use"
	}
	return c
}
