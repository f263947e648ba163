package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestGuestInitDecision(t *testing.T) {
	const booted = "console=ttyS0 quiet smolvm.hostname=web smolvm.ip=172.29.0.2/30"
	tests := []struct {
		name      string
		pid       int
		cmdline   string
		initramfs bool
		want      bool
		why       string
	}{
		{"smolvm VM", 1, booted, true, true, ""},
		{"not PID 1", 4242, booted, true, false, "not PID 1"},
		{"container entrypoint", 1, "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet", false, false, "is missing"},
		{"initramfs files but a foreign kernel command line", 1, "BOOT_IMAGE=/vmlinuz quiet", true, false, "no smolvm.* key"},
		{"no /proc to read", 1, "", true, false, "no smolvm.* key"},
		{"key only as a substring", 1, "quiet foo.smolvm.ip=1", true, false, "no smolvm.* key"},
		{"container in a smolvm VM", 1, booted, false, false, "is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := guestInitDecision(tt.pid, tt.cmdline, tt.initramfs)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Fatalf("guestInitDecision = %v, %q; want %v, %q", got, why, tt.want, tt.why)
			}
		})
	}
}

// TestAgentAsContainerPID1 runs the real agent binary as PID 1 of a new
// PID namespace, as a container runtime would: it must refuse, not take
// over the machine (mount, kill every process, power off).
func TestAgentAsContainerPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace (unshare --pid)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) is not installed")
	}
	bin := filepath.Join(t.TempDir(), "smolvm-agent")
	build := exec.Command("go", "build", "-o", bin, "github.com/smolvm/smolvm/cmd/smolvm-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOROOT="+runtime.GOROOT())
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	// --fork makes the agent PID 1 of the new namespace; --mount-proc gives
	// it a /proc of its own, as a container has.
	out, err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", bin).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("agent as a container's PID 1: err %v, want exit status 2; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "not a smolvm VM") || !strings.Contains(string(out), "container") {
		t.Fatalf("output does not say why:\n%s", out)
	}
}

// TestInitSignalsNotInherited runs catchInitSignals in a child test
// process, as PID 1 does at boot, and checks that a command it starts sees
// no ignored or blocked signal: an ignored SIGTERM would survive exec and
// make `kill` and `timeout` do nothing in the guest.
func TestInitSignalsNotInherited(t *testing.T) {
	if os.Getenv("SMOLVM_TEST_INIT_SIGNALS") == "1" {
		catchInitSignals()
		out, err := exec.Command("/bin/sh", "-c", "cat /proc/self/status | grep -E '^Sig(Ign|Blk)'").Output()
		if err != nil {
			t.Fatal(err)
		}
		os.Stdout.Write(out)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitSignalsNotInherited$", "-test.v")
	cmd.Env = append(os.Environ(), "SMOLVM_TEST_INIT_SIGNALS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, want := range []string{"SigIgn:\t0000000000000000", "SigBlk:\t0000000000000000"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("a command started after catchInitSignals: want %q in\n%s", want, out)
		}
	}
}
