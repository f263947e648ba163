package smolvm

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/kernel"
)

// Defaults applied to zero fields of VMConfig.
const (
	DefaultVCPUs       = 1
	DefaultMemoryMiB   = 512
	DefaultDiskMiB     = 512
	DefaultBootTimeout = 60 * time.Second
)

// Limits enforced by VMConfig.Validate.
const (
	MinMemoryMiB = 128
	MaxMemoryMiB = 256 * 1024
	MinDiskMiB   = 64
	MaxDiskMiB   = 2 * 1024 * 1024
	MaxVCPUs     = 64
)

// VMConfig describes a VM. The zero value is valid: an auto-configured VM
// from the default image with the defaults above.
type VMConfig struct {
	// ID names the VM: 1-63 letters, digits, '-', '_' or '.', starting with
	// a letter or digit. Empty = a random "vm-xxxxxxxx".
	ID string `json:"id"`
	// VCPUs is the number of virtual CPUs: 0 = the default, 1; at most
	// the host's CPUs. Negative is invalid.
	VCPUs int `json:"vcpus"`
	// MemoryMiB is the guest memory: 0 = the default, 512; at most the
	// host's RAM. Negative is invalid.
	MemoryMiB int `json:"memory_mib"`
	// DiskMiB is the size of the VM's own root disk: 0 = the default, 512
	// or the image's size if bigger; at most the free space where the
	// state directory is (see Validate). The guest filesystem is grown or
	// shrunk to it. Negative is invalid.
	DiskMiB int `json:"disk_mib"`
	// Image names a built image to boot (see package image). Empty, with
	// KernelPath and RootfsPath empty too, means the default image.
	Image string `json:"image,omitempty"`
	// KernelPath, RootfsPath and InitrdPath boot explicit files instead of
	// an image. RootfsPath is copied, never changed. InitrdPath must be a
	// smolvm agent initramfs; empty = built for the kernel.
	KernelPath string `json:"kernel_path,omitempty"`
	RootfsPath string `json:"rootfs_path,omitempty"`
	InitrdPath string `json:"initrd_path,omitempty"`
	// BootArgs is the kernel command line; empty = image.SSHBootArgs.
	BootArgs string `json:"boot_args,omitempty"`
	// Env is the VM's persistent environment: variables every command and
	// login shell in the guest sees. Set at create, it is changed by
	// VM.SetEnv and VM.UnsetEnv from then on (VMInfo.Config.Env shows the
	// current set) and written into the guest at every start, so what was
	// set or unset stays so across restarts. Names as ValidateEnvName
	// allows.
	Env map[string]string `json:"env,omitempty"`
	// Mounts share host folders into the guest (virtio-9p). They need a
	// guest kernel with 9p; smolvm picks one from /boot when the default
	// kernel lacks it.
	Mounts []Mount `json:"mounts,omitempty"`
	// NoEgress cuts the VM off from the host's networks; exposed ports
	// still reach it.
	NoEgress bool `json:"no_egress,omitempty"`
	// Egress limits where the VM may connect (allowed domains and CIDRs,
	// denied CIDRs); the zero value is the default perimeter: public
	// addresses only. See EgressPolicy; VM.SetEgressPolicy changes it.
	Egress EgressPolicy `json:"egress,omitzero"`
	// DNSUpstream is the resolver smolvm's DNS server forwards allowed
	// names to, "ADDR" or "ADDR:PORT"; empty = $SMOLVM_DNS_UPSTREAM, else
	// the host's /etc/resolv.conf, read at each start.
	DNSUpstream string `json:"dns_upstream,omitempty"`
	// RetainDiskOnDelete keeps the VM's disk file when it is deleted, at
	// DataDir/disk.ext4, until a create with ReuseDisk and the same ID
	// boots it again or RemoveKeptDisk removes it. Until then a create
	// with that ID fails with ErrAlreadyExists.
	RetainDiskOnDelete bool `json:"retain_disk_on_delete,omitempty"`
	// ReuseDisk boots the disk a deleted VM with this ID kept (see
	// RetainDiskOnDelete) instead of a copy of the image; the image still
	// gives the kernel and boot args. DiskMiB 0 keeps the disk's size. A
	// reused disk is kept again on delete: RetainDiskOnDelete is implied.
	ReuseDisk bool `json:"reuse_disk,omitempty"`
	// BootTimeout bounds Start: 0 = the default, 60s; ctx can bound it
	// further. Negative is invalid.
	BootTimeout time.Duration `json:"boot_timeout,omitempty"`
	// Limits bound the VM's CPU, memory, disk and network use (see
	// Limits); zero = unlimited. VM.SetLimits changes them later.
	Limits Limits `json:"limits,omitzero"`
	// TTL is the VM's lifetime, counted from its create: when it is over
	// the VM is ended as OnExpire says, whether or not the process that
	// made it still runs (see docs/lifetimes.md). 0 = no end. VM.SetTTL
	// changes it later. Negative is invalid.
	TTL time.Duration `json:"ttl,omitempty"`
	// ExpiresAt is when the lifetime ends: set from TTL at create (or
	// given instead of it) and by VM.SetTTL; zero = never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// OnExpire is what ends the VM at ExpiresAt: ExpireStop (the default),
	// ExpireHibernate or ExpireDelete.
	OnExpire string `json:"on_expire,omitempty"`
	// Labels tag the VM for List's filter (WithLabelFilter): at most 64,
	// keys as ValidateLabels allows.
	Labels map[string]string `json:"labels,omitempty"`
}

// Mount shares the host folder HostPath at GuestPath in the guest,
// read-only unless Writable.
type Mount struct {
	HostPath  string `json:"host_path"`
	GuestPath string `json:"guest_path"`
	Writable  bool   `json:"writable,omitempty"`
}

var (
	idPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	envPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// withDefaults returns c with zero fields filled in.
func (c VMConfig) withDefaults() VMConfig {
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.DiskMiB == 0 {
		c.DiskMiB = DefaultDiskMiB
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = DefaultBootTimeout
	}
	return c
}

// Validate checks c (after defaults) without creating anything: the
// limits above, and this host's, so that nothing is made that could not
// run. Memory may not exceed the host's RAM, vCPUs its CPUs, and the disk
// the free space of the filesystem that holds the state directory (opts
// name it, as for NewFromConfig; default DefaultHome): disks are sparse
// and several VMs may together promise more than is free, but one VM
// that could not fill its own disk is refused. Each problem is a
// *ValidationError; all of them are returned, joined.
func (c VMConfig) Validate(opts ...Option) error {
	return c.validate(probeHost(newSettings(opts).home))
}

// hostLimits are what this host can give a VM; zero fields are unknown
// and not checked.
type hostLimits struct {
	cpus      int
	memoryMiB int
	dir       string // the state directory, for messages
	freeMiB   int64  // free space on dir's filesystem; -1 = unknown
}

// probeHost reads the host's CPUs, RAM and the free space under home.
func probeHost(home string) hostLimits {
	h := hostLimits{cpus: runtime.NumCPU(), dir: home, freeMiB: -1}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kib, err := strconv.Atoi(f[1]); err == nil {
					h.memoryMiB = kib >> 10
				}
			}
		}
	}
	// The state directory may not exist yet: its nearest existing parent
	// is on the filesystem it will be made on.
	for dir := filepath.Clean(home); ; dir = filepath.Dir(dir) {
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err == nil {
			h.freeMiB = int64(fs.Bavail) * fs.Bsize >> 20
			break
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	return h
}

func (c VMConfig) validate(host hostLimits) error {
	c = c.withDefaults()
	var errs []error
	bad := func(field string, v any, reason string) {
		errs = append(errs, &ValidationError{Field: field, Value: v, Reason: reason})
	}
	if c.ID != "" && !idPattern.MatchString(c.ID) {
		bad("id", fmt.Sprintf("%q", c.ID), "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	switch {
	case c.VCPUs < 0:
		bad("vcpus", c.VCPUs, fmt.Sprintf("must not be negative; 0 means the default, %d", DefaultVCPUs))
	case host.cpus > 0 && host.cpus < MaxVCPUs && c.VCPUs > host.cpus:
		bad("vcpus", c.VCPUs, fmt.Sprintf("this host has %d CPUs; use at most %d", host.cpus, host.cpus))
	case c.VCPUs > MaxVCPUs:
		bad("vcpus", c.VCPUs, fmt.Sprintf("must be between 1 and %d", MaxVCPUs))
	}
	switch {
	case c.MemoryMiB < 0:
		bad("memory", fmt.Sprintf("%d MiB", c.MemoryMiB), fmt.Sprintf("must not be negative; 0 means the default, %d MiB", DefaultMemoryMiB))
	case c.MemoryMiB < MinMemoryMiB:
		bad("memory", fmt.Sprintf("%d MiB", c.MemoryMiB), fmt.Sprintf("must be at least %d MiB", MinMemoryMiB))
	case host.memoryMiB > 0 && host.memoryMiB < MaxMemoryMiB && c.MemoryMiB > host.memoryMiB:
		bad("memory", fmt.Sprintf("%d MiB", c.MemoryMiB), fmt.Sprintf("this host has %d MiB of RAM; use at most that", host.memoryMiB))
	case c.MemoryMiB > MaxMemoryMiB:
		bad("memory", fmt.Sprintf("%d MiB", c.MemoryMiB), fmt.Sprintf("must be between %d and %d MiB", MinMemoryMiB, MaxMemoryMiB))
	}
	if err := checkDisk(c.DiskMiB, host); err != nil {
		errs = append(errs, err)
	}
	if c.ReuseDisk && c.ID == "" {
		bad("reuse disk", true, "needs the ID of the deleted VM whose disk was kept")
	}
	if c.BootTimeout < 0 {
		bad("boot timeout", c.BootTimeout, fmt.Sprintf("must not be negative; 0 means the default, %s", DefaultBootTimeout))
	}
	if c.Image != "" && (c.KernelPath != "" || c.RootfsPath != "") {
		bad("image", fmt.Sprintf("%q", c.Image), "give either an image or kernel and rootfs paths, not both")
	}
	if (c.KernelPath == "") != (c.RootfsPath == "") {
		bad("kernel/rootfs", fmt.Sprintf("%q/%q", c.KernelPath, c.RootfsPath), "give both a kernel and a root filesystem, or neither for the default image")
	}
	for field, p := range map[string]string{"kernel path": c.KernelPath, "rootfs path": c.RootfsPath, "initrd path": c.InitrdPath} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err != nil {
			bad(field, fmt.Sprintf("%q", p), "no such file")
		} else if !fi.Mode().IsRegular() {
			bad(field, fmt.Sprintf("%q", p), "not a regular file")
		} else if reason := checkContent(field, p); reason != "" {
			bad(field, fmt.Sprintf("%q", p), reason)
		}
	}
	if err := ValidateEnv(c.Env); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.validateLifetime()...)
	if err := ValidateLabels(c.Labels); err != nil {
		errs = append(errs, err)
	}
	for _, m := range c.Mounts {
		errs = append(errs, m.validate()...)
	}
	errs = append(errs, c.Limits.validate(c)...)
	errs = append(errs, c.validateEgress()...)
	if strings.ContainsAny(c.BootArgs, "\n\x00") {
		bad("boot args", fmt.Sprintf("%q", c.BootArgs), "must be one line")
	}
	return errors.Join(errs...)
}

// checkContent says what is wrong with the file at p for field, looking
// at its first bytes only: a kernel must be a bzImage or ELF vmlinux, a
// root filesystem ext2/3/4. An unreadable file is left for the start to
// report.
func checkContent(field, p string) string {
	switch field {
	case "kernel path":
		if _, err := kernel.Detect(p); errors.Is(err, kernel.ErrFormat) {
			return "not a Linux kernel (a bzImage or ELF vmlinux, such as /boot/vmlinuz-*)"
		}
	case "rootfs path":
		f, err := os.Open(p)
		if err != nil {
			return ""
		}
		defer f.Close()
		var magic [2]byte
		if _, err := f.ReadAt(magic[:], 1080); err != nil || magic != [2]byte{0x53, 0xef} {
			return "not an ext2/3/4 filesystem image (build one with smolvm image build, or mke2fs -d DIR)"
		}
	}
	return ""
}

// checkDisk checks a disk size against the limits and the free space of
// the state directory's filesystem (see Validate for the rule).
func checkDisk(mib int, host hostLimits) error {
	bad := func(reason string) error {
		return &ValidationError{Field: "disk", Value: fmt.Sprintf("%d MiB", mib), Reason: reason}
	}
	switch {
	case mib < 0:
		return bad(fmt.Sprintf("must not be negative; 0 means the default, %d MiB or the image's size if bigger", DefaultDiskMiB))
	case mib < MinDiskMiB:
		return bad(fmt.Sprintf("must be at least %d MiB", MinDiskMiB))
	case host.freeMiB >= 0 && host.freeMiB < MaxDiskMiB && int64(mib) > host.freeMiB:
		return bad(fmt.Sprintf("only %d MiB are free on the filesystem of %s, and the VM must be able to fill its disk; free some space or ask for less", host.freeMiB, host.dir))
	case mib > MaxDiskMiB:
		return bad(fmt.Sprintf("must be between %d and %d MiB", MinDiskMiB, MaxDiskMiB))
	}
	return nil
}

// ValidateEnvName checks that name can be an environment variable in the
// guest: letters, digits and '_', not starting with a digit. VMConfig.Env,
// ExecOptions.Env, SetEnv and UnsetEnv are all checked with it; the error
// is a *ValidationError.
func ValidateEnvName(name string) error {
	if !envPattern.MatchString(name) {
		return &ValidationError{Field: "env name", Value: fmt.Sprintf("%q", name), Reason: "use letters, digits and '_', not starting with a digit"}
	}
	return nil
}

// ValidateEnv checks every name in env with ValidateEnvName, and that no
// value holds a NUL byte.
func ValidateEnv(env map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(env)) {
		errs = append(errs, ValidateEnvName(k))
		if strings.ContainsRune(env[k], 0) {
			// A C string ends at NUL: the guest could not set it.
			errs = append(errs, &ValidationError{Field: "env value", Value: k, Reason: "contains a NUL byte, which no environment variable can hold"})
		}
	}
	return errors.Join(errs...)
}
