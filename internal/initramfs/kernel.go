package initramfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// KernelRelease reads the release string ("6.1.0-56-cloud-amd64") from a
// kernel image: the version field of a bzImage's setup header, or, for an
// uncompressed vmlinux, its "Linux version" banner.
func KernelRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("kernel release of %s: %w", path, err)
	}
	if string(hdr[0x202:0x206]) == "HdrS" {
		ptr := int64(binary.LittleEndian.Uint16(hdr[0x20e:])) + 0x200
		buf := make([]byte, 256)
		n, _ := f.ReadAt(buf, ptr)
		return firstField(buf[:n]), nil
	}
	if string(hdr[:4]) == "\x7fELF" {
		data, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("kernel release of %s: %w", path, err)
		}
		if i := bytes.Index(data, []byte("Linux version ")); i >= 0 {
			return firstField(data[i+len("Linux version "):][:256]), nil
		}
	}
	return "", fmt.Errorf("kernel release of %s: not a bzImage or vmlinux", path)
}

func firstField(b []byte) string {
	if i := bytes.IndexAny(b, " \x00"); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
