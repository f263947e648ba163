package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/hypervisor"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestArgsGolden(t *testing.T) {
	spec := hypervisor.Spec{
		ID: "web", Name: hypervisor.Name("web", "0123456789"), VCPUs: 2, MemoryMiB: 512, Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0 quiet",
		Disk: "/d.ext4", ConsoleLog: "/c.log",
	}
	tap := spec
	tap.Net = hypervisor.NetSpec{TAP: "smol0123456789", MAC: "02:00:00:00:00:01"}
	tap.ControlSocket = "/qmp.sock"
	tap.Mounts = []hypervisor.Mount{{Tag: "smol0", HostPath: "/srv/data", ReadOnly: true}, {Tag: "smol1", HostPath: "/srv/w,security_model=passthrough"}, {Tag: "smol2", HostPath: "/tmpfs", MappedFile: true}}
	user := spec
	user.Net = hypervisor.NetSpec{Forwards: []hypervisor.Forward{{HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22}}}
	tests := []struct {
		name string
		q    QEMU
		spec hypervisor.Spec
	}{
		{"tcg-tap", QEMU{TSCkHz: 2600000}, tap},
		{"kvm-user", QEMU{KVM: true}, user},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(tt.q.Args(tt.spec), "\n") + "\n"
			golden := filepath.Join("testdata", tt.name+".golden")
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("args differ from %s (run with -update to accept):\n%s", golden, got)
			}
		})
	}
}

func TestName(t *testing.T) {
	if (&QEMU{}).Name() != "qemu-tcg" || (&QEMU{KVM: true}).Name() != "qemu-kvm" {
		t.Fatal("names")
	}
	if (&QEMU{KVM: true, TSCkHz: 1}).ExtraCmdline() != "" {
		t.Fatal("KVM guests need no TSC hint")
	}
}
