package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Paths inside the archive that the agent and the host agree on.
const (
	ModulesDir   = "lib/modules/smolvm" // *.ko, loaded in the order of ModulesOrder
	ModulesOrder = "lib/modules/smolvm/order"
	// MountModulesOrder lists the modules for host folder mounts (9p),
	// which the agent loads only for VMs that have mounts.
	MountModulesOrder = "lib/modules/smolvm/mount.order"
	// Per-VM files, appended as a second archive.
	HostKeyFile        = "smolvm/host_key"
	AuthorizedKeysFile = "smolvm/authorized_keys"
	EnvFile            = "smolvm/env.json"
)

// Base returns the files of the shared part of a guest initramfs: agent as
// /init, /dev/console, and the modules for the kernel in modulesRoot (such
// as /lib/modules/6.1.0-56-cloud-amd64). A missing modulesRoot is fine for
// kernels that build the drivers in.
func Base(agent []byte, modulesRoot string) ([]File, error) {
	files := []File{
		{Name: "init", Mode: 0o755, Data: agent},
		{Name: "dev/console", Mode: fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Name: "newroot", Mode: fs.ModeDir | 0o755},
		{Name: "proc", Mode: fs.ModeDir | 0o755},
		{Name: "sys", Mode: fs.ModeDir | 0o755},
	}
	dep, err := os.ReadFile(filepath.Join(modulesRoot, "modules.dep"))
	if os.IsNotExist(err) {
		return append(files, File{Name: ModulesOrder, Mode: 0o644}), nil
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	seen := map[string]bool{}
	for _, set := range []struct {
		order  string
		wanted []string
	}{{ModulesOrder, GuestModules}, {MountModulesOrder, MountModules}} {
		mods, err := ResolveModules(bytes.NewReader(dep), set.wanted)
		if err != nil {
			return nil, err
		}
		var order []string
		for _, m := range mods {
			if !strings.HasSuffix(m, ".ko") {
				return nil, fmt.Errorf("initramfs: module %s is compressed; smolvm needs uncompressed .ko files", m)
			}
			name := path.Base(m)
			order = append(order, name)
			if seen[name] {
				continue // already in the archive, and loaded first
			}
			seen[name] = true
			data, err := os.ReadFile(filepath.Join(modulesRoot, m))
			if err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
			files = append(files, File{Name: path.Join(ModulesDir, name), Mode: 0o644, Data: StripSignature(data)})
		}
		files = append(files, File{Name: set.order, Mode: 0o644, Data: []byte(strings.Join(order, "\n") + "\n")})
	}
	return files, nil
}

// Append writes dst as the base archive followed by an archive of files,
// which the kernel unpacks over the base: a VM's own initramfs.
func Append(base, dst string, files []File) error {
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = Write(out, files)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
