package smolvm

import (
	"fmt"
	"path/filepath"
	"sort"

	"github.com/smolvm/smolvm/internal/initramfs"
)

// kernelHas9p reports whether kernel has the modules for host folder
// mounts, judging by the modules installed for its release.
func kernelHas9p(kernel string) bool {
	release, err := initramfs.KernelRelease(kernel)
	if err != nil {
		return false
	}
	return initramfs.HasModules(filepath.Join("/lib/modules", release), initramfs.MountModules...)
}

// mountKernel picks the kernel for a VM with host folder mounts: the given
// one if it can mount them, else, when none was asked for, the newest
// kernel in /boot that can. Debian's cloud kernel, the default, has no 9p.
func mountKernel(given string, explicit bool) (string, error) {
	if kernelHas9p(given) {
		return given, nil
	}
	if explicit {
		return "", &ValidationError{Field: "kernel", Value: given,
			Reason: "has no 9p support, which host folder mounts need; use a kernel with 9p (Debian: linux-image-amd64)"}
	}
	all, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	for _, k := range all {
		if kernelHas9p(k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("%w: host folder mounts need a guest kernel with 9p and none is installed: apt-get install linux-image-amd64 (Debian's cloud kernel has no 9p)", ErrInvalid)
}
