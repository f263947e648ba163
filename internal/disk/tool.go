package disk

import (
	"os/exec"
	"path/filepath"
)

// Tool returns the path of an e2fsprogs program (mke2fs, resize2fs,
// debugfs, e2fsck). Debian installs them in /sbin, which is not on an
// ordinary user's PATH, so those directories are tried after PATH. When
// none has it, name is returned as it is, for exec to report.
func Tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p
		}
	}
	return name
}
