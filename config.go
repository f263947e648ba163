package smolvm

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
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
	// VCPUs is the number of virtual CPUs (default 1).
	VCPUs int `json:"vcpus"`
	// MemoryMiB is the guest memory (default 512).
	MemoryMiB int `json:"memory_mib"`
	// DiskMiB is the size of the VM's own root disk (default 512, or the
	// image's size if bigger); the guest filesystem is grown or shrunk to it.
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
	// Env is set in the guest at every start, on top of variables set
	// with SetEnv since.
	Env map[string]string `json:"env,omitempty"`
	// Mounts share host folders into the guest (virtio-9p). They need a
	// guest kernel with 9p; smolvm picks one from /boot when the default
	// kernel lacks it.
	Mounts []Mount `json:"mounts,omitempty"`
	// NoEgress cuts the VM off from the host's networks; exposed ports
	// still reach it.
	NoEgress bool `json:"no_egress,omitempty"`
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
	// BootTimeout bounds Start (default 60s); ctx can bound it further.
	BootTimeout time.Duration `json:"boot_timeout,omitempty"`
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

// Validate checks c (after defaults) without creating anything. Each
// problem is a *ValidationError; all of them are returned, joined.
func (c VMConfig) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(field string, v any, reason string) {
		errs = append(errs, &ValidationError{Field: field, Value: v, Reason: reason})
	}
	if c.ID != "" && !idPattern.MatchString(c.ID) {
		bad("id", fmt.Sprintf("%q", c.ID), "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		bad("vcpus", c.VCPUs, fmt.Sprintf("must be between 1 and %d", MaxVCPUs))
	}
	if c.MemoryMiB < MinMemoryMiB || c.MemoryMiB > MaxMemoryMiB {
		bad("memory", fmt.Sprintf("%d MiB", c.MemoryMiB), fmt.Sprintf("must be between %d and %d MiB", MinMemoryMiB, MaxMemoryMiB))
	}
	if c.DiskMiB < MinDiskMiB || c.DiskMiB > MaxDiskMiB {
		bad("disk", fmt.Sprintf("%d MiB", c.DiskMiB), fmt.Sprintf("must be between %d and %d MiB", MinDiskMiB, MaxDiskMiB))
	}
	if c.ReuseDisk && c.ID == "" {
		bad("reuse disk", true, "needs the ID of the deleted VM whose disk was kept")
	}
	if c.BootTimeout < 0 {
		bad("boot timeout", c.BootTimeout, "must be positive")
	}
	if c.Image != "" && (c.KernelPath != "" || c.RootfsPath != "") {
		bad("image", fmt.Sprintf("%q", c.Image), "give either an image or kernel and rootfs paths, not both")
	}
	if (c.KernelPath == "") != (c.RootfsPath == "") {
		bad("kernel/rootfs", fmt.Sprintf("%q/%q", c.KernelPath, c.RootfsPath), "give both KernelPath and RootfsPath, or neither for the default image")
	}
	for field, p := range map[string]string{"kernel path": c.KernelPath, "rootfs path": c.RootfsPath, "initrd path": c.InitrdPath} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err != nil {
			bad(field, fmt.Sprintf("%q", p), "no such file")
		} else if !fi.Mode().IsRegular() {
			bad(field, fmt.Sprintf("%q", p), "not a regular file")
		}
	}
	for k := range c.Env {
		if !envPattern.MatchString(k) {
			bad("env name", fmt.Sprintf("%q", k), "use letters, digits and '_', not starting with a digit")
		}
	}
	for _, m := range c.Mounts {
		errs = append(errs, m.validate()...)
	}
	if strings.ContainsAny(c.BootArgs, "\n\x00") {
		bad("boot args", fmt.Sprintf("%q", c.BootArgs), "must be one line")
	}
	return errors.Join(errs...)
}
