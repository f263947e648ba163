// Package kernel reads Linux kernel images: which format a file is, and
// the uncompressed ELF vmlinux inside a bzImage (what Firecracker boots).
package kernel

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Format is a kernel image format.
type Format string

// The formats smolvm boots: QEMU takes a bzImage (or a vmlinux with a PVH
// note), Firecracker an uncompressed ELF vmlinux.
const (
	BzImage Format = "bzImage"
	ELF     Format = "vmlinux"
)

// ErrFormat is returned for a file that is not a kernel image smolvm knows.
var ErrFormat = errors.New("not a bzImage or ELF vmlinux")

// Detect reports the format of the kernel image at path.
func Detect(path string) (Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	n, _ := io.ReadFull(f, hdr)
	return detect(hdr[:n], path)
}

func detect(hdr []byte, path string) (Format, error) {
	switch {
	case len(hdr) >= 4 && string(hdr[:4]) == "\x7fELF":
		return ELF, nil
	case len(hdr) >= 0x206 && string(hdr[0x202:0x206]) == "HdrS":
		return BzImage, nil
	}
	return "", fmt.Errorf("kernel %s: %w", path, ErrFormat)
}

// ExtractELF writes the uncompressed vmlinux inside the bzImage at path to
// w. The payload's compression (gzip, bzip2, lzma, xz, lz4 or zstd) is
// found from its magic bytes, as the kernel's own extract-vmlinux does,
// but the payload is located through the boot protocol header rather than
// by scanning.
func ExtractELF(path string, w io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	payload, err := bzPayload(data)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	r, err := decompressor(payload)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return fmt.Errorf("kernel %s: decompress: %w", path, err)
	}
	if string(head[:]) != "\x7fELF" {
		return fmt.Errorf("kernel %s: payload is not an ELF image", path)
	}
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("kernel %s: decompress: %w", path, err)
	}
	return nil
}

// bzPayload returns the compressed kernel inside a bzImage (boot protocol
// 2.08 or later: payload_offset and payload_length in the setup header).
func bzPayload(data []byte) ([]byte, error) {
	if _, err := detect(data, ""); err != nil || len(data) < 0x250 {
		return nil, ErrFormat
	}
	if string(data[:4]) == "\x7fELF" {
		return nil, errors.New("already an ELF vmlinux")
	}
	if v := binary.LittleEndian.Uint16(data[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %d.%02d has no payload fields (need 2.08)", v>>8, v&0xff)
	}
	setupSects := int(data[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects + 1) * 512
	off := start + int(binary.LittleEndian.Uint32(data[0x248:]))
	n := int(binary.LittleEndian.Uint32(data[0x24c:]))
	if off < start || n <= 0 || off+n > len(data) {
		return nil, errors.New("payload lies outside the file")
	}
	return data[off : off+n], nil
}

// decompressor picks the decompressor from the payload's magic. Formats
// the kernel build appends the uncompressed size to (all but gzip and
// bzip2) lose those 4 trailing bytes first.
func decompressor(p []byte) (io.Reader, error) {
	trim := func() []byte {
		if len(p) > 4 {
			return p[:len(p)-4]
		}
		return p
	}
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, err
		}
		gz.Multistream(false)
		return gz, nil
	case bytes.HasPrefix(p, []byte("BZh")):
		return bzip2.NewReader(bytes.NewReader(p)), nil
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		c := xz.ReaderConfig{SingleStream: true}
		return c.NewReader(bytes.NewReader(trim()))
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		return lz4.NewReader(bytes.NewReader(trim())), nil
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(bytes.NewReader(trim()), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<31))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(p, []byte{0x5d, 0, 0}):
		return lzma.NewReader(bytes.NewReader(trim()))
	}
	return nil, fmt.Errorf("unknown payload compression (magic % x); lzo is not supported", p[:min(len(p), 6)])
}
