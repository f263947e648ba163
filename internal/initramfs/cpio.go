// Package initramfs writes the small initramfs that every smolvm guest boots
// through: the agent as /init, the kernel modules it loads, and per-VM files.
package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// File is one entry of an archive. Directories and the parents of files are
// created by Write as needed.
type File struct {
	Name string // path inside the archive, without leading slash
	Mode fs.FileMode
	Data []byte
	// Major and Minor are the device numbers of a character device
	// (Mode has fs.ModeCharDevice).
	Major, Minor uint32
}

// Write writes files as a "newc" cpio archive, the format the kernel unpacks.
// Archives written this way can be concatenated: the kernel unpacks each in
// turn, so per-VM files are appended to a shared base image.
func Write(w io.Writer, files []File) error {
	bw := bufio.NewWriter(w)
	cw := &cpioWriter{w: bw, ino: 1}
	dirs := map[string]bool{}
	sorted := append([]File(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, f := range sorted {
		name := strings.TrimPrefix(path.Clean("/"+f.Name), "/")
		if name == "" {
			return fmt.Errorf("initramfs: empty file name")
		}
		for _, d := range parents(name) {
			if !dirs[d] {
				dirs[d] = true
				if err := cw.entry(d, 0o040755, nil); err != nil {
					return err
				}
			}
		}
		mode := uint32(f.Mode.Perm())
		switch {
		case f.Mode.IsDir():
			dirs[name] = true
			mode |= 0o040000
		case f.Mode&fs.ModeCharDevice != 0:
			mode |= 0o020000
			cw.major, cw.minor = f.Major, f.Minor
		default:
			mode |= 0o100000
		}
		err := cw.entry(name, mode, f.Data)
		cw.major, cw.minor = 0, 0
		if err != nil {
			return err
		}
	}
	if err := cw.entry("TRAILER!!!", 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

func parents(name string) []string {
	var out []string
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

type cpioWriter struct {
	w            io.Writer
	ino          uint32
	off          int64
	major, minor uint32 // rdev of the next entry
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) error {
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, c.major, c.minor, len(name)+1, 0)
	c.ino++
	if err := c.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}
