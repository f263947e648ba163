package smolvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/initramfs"
)

// ParseMount reads the CLI's HOST[:GUEST][:rw|ro] form of a Mount. A
// relative HOST is taken from the current directory; an empty one is an
// error, never "the current directory". GUEST defaults to /mnt/<base of
// HOST>. The result still goes through VMConfig.Validate.
func ParseMount(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	m := Mount{HostPath: parts[0]}
	if last := parts[len(parts)-1]; len(parts) > 1 && (last == "rw" || last == "ro") {
		m.Writable = last == "rw"
		parts = parts[:len(parts)-1]
	}
	if len(parts) > 2 {
		return m, &ValidationError{Field: "mount", Value: fmt.Sprintf("%q", s), Reason: "want HOST[:GUEST][:rw]"}
	}
	if m.HostPath == "" {
		return m, &ValidationError{Field: "mount host path", Value: fmt.Sprintf("%q", s), Reason: "is empty; name the host folder to share (use . for the current directory)"}
	}
	abs, err := filepath.Abs(m.HostPath)
	if err != nil {
		return m, &ValidationError{Field: "mount host path", Value: fmt.Sprintf("%q", m.HostPath), Reason: err.Error()}
	}
	m.HostPath = abs
	if len(parts) == 2 {
		m.GuestPath = parts[1]
	} else {
		m.GuestPath = "/mnt/" + filepath.Base(abs)
	}
	return m, nil
}

// validate checks one mount without touching it.
func (m Mount) validate() []error {
	var errs []error
	bad := func(field, v, reason string) {
		errs = append(errs, &ValidationError{Field: field, Value: fmt.Sprintf("%q", v), Reason: reason})
	}
	switch fi, err := os.Stat(m.HostPath); {
	case m.HostPath == "":
		bad("mount host path", m.HostPath, "is empty; name the host folder to share")
	case !filepath.IsAbs(m.HostPath):
		bad("mount host path", m.HostPath, "must be an absolute path")
	case errors.Is(err, os.ErrNotExist):
		bad("mount host path", m.HostPath, "does not exist; create the folder first")
	case err != nil:
		bad("mount host path", m.HostPath, err.Error())
	case !fi.IsDir():
		bad("mount host path", m.HostPath, "is not a directory; share the folder that holds it")
	}
	if !filepath.IsAbs(m.GuestPath) || strings.ContainsAny(m.GuestPath, " \t\n:,") || filepath.Clean(m.GuestPath) == "/" {
		bad("mount guest path", m.GuestPath, "must be an absolute path other than /, without spaces, ':' or ','")
	}
	return errs
}

// hypervisorMounts turns the config's mounts into the backend's. Each
// share keeps what the guest sets (owner, mode, device numbers, symlinks)
// as metadata beside the host file, never in the host file itself, so a
// guest root cannot plant a setuid program or a device node on the host.
// User xattrs hold that metadata where the host filesystem has them, a
// .virtfs_metadata directory in the share where it does not.
func hypervisorMounts(ms []Mount) []hypervisor.Mount {
	var out []hypervisor.Mount
	for i, m := range ms {
		out = append(out, hypervisor.Mount{Tag: mountTag(i), HostPath: m.HostPath, ReadOnly: !m.Writable,
			MappedFile: !userXattrs(m.HostPath)})
	}
	return out
}

// userXattrs reports whether dir's filesystem stores user extended
// attributes. It only reads: a missing attribute (ENODATA) means yes.
func userXattrs(dir string) bool {
	_, err := unix.Getxattr(dir, "user.smolvm.probe", nil)
	return !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EOPNOTSUPP)
}

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
