package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// GuestModules are the drivers a guest needs before it can mount its root
// and reach the network, for kernels that build them as modules (Debian's
// cloud kernel does). microvm has no PCI bus, so only virtio-mmio.
// Kernels that build ext4 as a module (Debian's generic one) need it and
// the crc32c driver its checksums use, which nothing would load otherwise.
// virtio_console carries the host's control port (new identities of
// clones).
var GuestModules = []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "crc32c_generic", "ext4"}

// MountModules share host folders into the guest (virtio-9p). Kernels
// without them (Debian's cloud kernel) cannot mount host folders.
var MountModules = []string{"9pnet_virtio", "9p"}

// sigMagic ends a module that carries an appended signature.
const sigMagic = "~Module signature appended~\n"

// StripSignature removes a module's appended signature. The kernel then
// skips verifying it (an RSA check per module, slow under emulation) and
// loads it as unsigned, which it allows unless module.sig_enforce is set.
func StripSignature(ko []byte) []byte {
	if len(ko) < len(sigMagic)+12 || string(ko[len(ko)-len(sigMagic):]) != sigMagic {
		return ko
	}
	// struct module_signature (12 bytes) precedes the magic; its last
	// field is the big-endian signature length.
	info := ko[len(ko)-len(sigMagic)-12 : len(ko)-len(sigMagic)]
	sigLen := int(info[8])<<24 | int(info[9])<<16 | int(info[10])<<8 | int(info[11])
	end := len(ko) - len(sigMagic) - 12 - sigLen
	if end <= 0 {
		return ko
	}
	return ko[:end]
}

// ResolveModules reads a modules.dep file and returns the module paths (as
// written there, relative to the modules directory) needed to load wanted,
// dependencies first. Wanted modules that the kernel does not list are
// skipped: they are built in, or not needed on this kernel.
func ResolveModules(modulesDep io.Reader, wanted []string) ([]string, error) {
	deps := map[string][]string{} // module path -> dependency paths
	byName := map[string]string{} // module name -> path
	sc := bufio.NewScanner(modulesDep)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[moduleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("initramfs: read modules.dep: %w", err)
	}
	var order []string
	seen := map[string]bool{}
	var visit func(mod string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		for _, d := range deps[mod] {
			visit(d)
		}
		order = append(order, mod)
	}
	for _, name := range wanted {
		if mod, ok := byName[strings.ReplaceAll(name, "-", "_")]; ok {
			visit(mod)
		}
	}
	return order, nil
}

// moduleName turns "kernel/drivers/net/virtio_net.ko.xz" into "virtio_net".
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// HasModules reports whether the kernel under modulesRoot provides every
// one of names, as modules or built in.
func HasModules(modulesRoot string, names ...string) bool {
	for _, list := range []string{"modules.dep", "modules.builtin"} {
		data, err := os.ReadFile(filepath.Join(modulesRoot, list))
		if err != nil {
			continue
		}
		var missing []string
		for _, n := range names {
			if !bytes.Contains(data, []byte("/"+n+".ko")) {
				missing = append(missing, n)
			}
		}
		names = missing
	}
	return len(names) == 0
}
