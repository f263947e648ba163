package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// fakeELF is enough of an ELF file to be recognised.
var fakeELF = append([]byte("\x7fELF\x02\x01\x01"), bytes.Repeat([]byte("kernel text "), 5000)...)

// bzImage wraps payload in a minimal boot protocol 2.15 header.
func bzImage(payload []byte) []byte {
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	binary.LittleEndian.PutUint32(img[0x248:], 64) // payload after 64 bytes of code
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	img = append(img, make([]byte, 64)...)
	return append(append(img, payload...), make([]byte, 100)...)
}

func sizeAppended(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, uint32(len(fakeELF)))
}

func TestExtractELF(t *testing.T) {
	compress := map[string]func() []byte{
		"gzip": func() []byte {
			var buf bytes.Buffer
			w := gzip.NewWriter(&buf)
			w.Write(fakeELF)
			w.Close()
			return buf.Bytes()
		},
		"xz": func() []byte {
			var buf bytes.Buffer
			w, _ := xz.NewWriter(&buf)
			w.Write(fakeELF)
			w.Close()
			return sizeAppended(buf.Bytes())
		},
		"lz4 legacy": func() []byte {
			var buf bytes.Buffer
			w := lz4.NewWriter(&buf)
			w.Apply(lz4.LegacyOption(true))
			w.Write(fakeELF)
			w.Close()
			return sizeAppended(buf.Bytes())
		},
		"zstd": func() []byte {
			var buf bytes.Buffer
			w, _ := zstd.NewWriter(&buf)
			w.Write(fakeELF)
			w.Close()
			return sizeAppended(buf.Bytes())
		},
	}
	dir := t.TempDir()
	for name, c := range compress {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			os.WriteFile(p, bzImage(c()), 0o644)
			if f, err := Detect(p); err != nil || f != BzImage {
				t.Fatalf("Detect = %v, %v", f, err)
			}
			var out bytes.Buffer
			if err := ExtractELF(p, &out); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), fakeELF) {
				t.Fatalf("extracted %d bytes, want %d", out.Len(), len(fakeELF))
			}
		})
	}
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, bzImage([]byte("LZO? no")), 0o644)
	if err := ExtractELF(junk, &bytes.Buffer{}); err == nil {
		t.Error("unknown compression extracted")
	}
	if _, err := Detect(filepath.Join(dir, "gzip")); err != nil {
		t.Error(err)
	}
	os.WriteFile(junk, []byte("plain text"), 0o644)
	if _, err := Detect(junk); err == nil {
		t.Error("text detected as a kernel")
	}
}

// TestHostKernel extracts the host's guest kernel, if there is one.
func TestHostKernel(t *testing.T) {
	list, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(list) == 0 {
		t.Skip("no /boot/vmlinuz-* on this host")
	}
	out := filepath.Join(t.TempDir(), "vmlinux")
	f, _ := os.Create(out)
	err := ExtractELF(list[len(list)-1], f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	e, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Machine != elf.EM_X86_64 || e.Type != elf.ET_EXEC {
		t.Fatalf("vmlinux: machine %v type %v", e.Machine, e.Type)
	}
	if format, _ := Detect(out); format != ELF {
		t.Fatalf("Detect(vmlinux) = %v", format)
	}
}
