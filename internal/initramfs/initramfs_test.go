package initramfs

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestResolveModules(t *testing.T) {
	dep := `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`
	tests := []struct {
		name   string
		wanted []string
		want   []string
	}{
		{"deps first, no repeats", []string{"virtio_mmio", "virtio_net"}, []string{
			"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_mmio.ko",
			"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}},
		{"built-in modules skipped", []string{"virtio_blk"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveModules(strings.NewReader(dep), tt.wanted)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestWriteUnpacks checks the archive with the system cpio, the same format
// reader the kernel implements.
func TestWriteUnpacks(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed (apt-get install cpio)")
	}
	var a, b bytes.Buffer
	if err := Write(&a, []File{{Name: "init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}, {Name: "a/b/c.txt", Mode: 0o600, Data: []byte("hello")}}); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, []File{{Name: "smolvm/host_key", Mode: 0o600, Data: []byte("key")}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, arch := range [][]byte{a.Bytes(), b.Bytes()} {
		cmd := exec.Command(cpio, "-idm", "--quiet")
		cmd.Dir = dir
		cmd.Stdin = bytes.NewReader(arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio: %v\n%s", err, out)
		}
	}
	for name, want := range map[string]string{"init": "#!/bin/sh\n", "a/b/c.txt": "hello", "smolvm/host_key": "key"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init mode: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a/b")); err != nil || !fi.IsDir() || fi.Mode()&fs.ModePerm != 0o755 {
		t.Errorf("parent dir: %v", err)
	}
}

func TestKernelRelease(t *testing.T) {
	matches, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(matches) == 0 {
		t.Skip("no kernel in /boot (apt-get install linux-image-cloud-amd64)")
	}
	got, err := KernelRelease(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-"); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestStripSignature(t *testing.T) {
	body := []byte("\x7fELF module body")
	sig := []byte("SIGNATURE-BYTES")
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(sig))}
	signed := append(append(append(append([]byte{}, body...), sig...), info...), sigMagic...)
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed, body},
		{"unsigned", body, body},
		{"magic but bogus length", append([]byte("x"), append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0}, sigMagic...)...), append([]byte("x"), append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0}, sigMagic...)...)},
	}
	for _, tt := range tests {
		if got := StripSignature(tt.in); !bytes.Equal(got, tt.want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}
