package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
)

// imageCLI runs the CLI in this process with agent as the guest agent.
func imageCLI(t *testing.T, agent string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	g := &globalOptions{agent: agent}
	root := newRootCmd(g)
	var out, errOut bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader("stdin password\n"))
	root.SetOut(&out)
	root.SetErr(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, err = root.ExecuteContextC(ctx)
	return out.String(), errOut.String(), err
}

// staticAgent builds this command statically: it is the guest agent.
func staticAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "smolvm")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestImageCommands drives build, list, inspect, run --image, create
// --image and rm; one VM boots.
func TestImageCommands(t *testing.T) {
	alpine := os.Getenv("SMOLVM_ALPINE_SOURCE")
	if alpine == "" {
		t.Skip("SMOLVM_ALPINE_SOURCE is unset; point it at a local Alpine minirootfs (such as /work/shared/alpine)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	agent := staticAgent(t)
	home := t.TempDir()
	base := []string{"--home", home}

	out, stderr, err := imageCLI(t, agent, append(base, "--json", "image", "build", "--from", "alpine", "--mirror", alpine,
		"-t", "cli-img", "--size", "100", "--password-stdin")...)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "making 100 MiB ext4") {
		t.Errorf("no progress lines on stderr: %q", stderr)
	}
	var img image.Image
	if err := json.Unmarshal([]byte(out), &img); err != nil || img.Name != "cli-img" || img.SizeMiB != 100 || !img.Password {
		t.Fatalf("build --json: %v %+v\n%s", err, img, out)
	}
	out, _, err = imageCLI(t, agent, append(base, "image", "build", "--from", "alpine", "--mirror", alpine,
		"-t", "cli-img", "--size", "100", "--password-stdin")...)
	if err != nil || !strings.Contains(out, "cached") {
		t.Errorf("second build: %v, %q; want it cached", err, out)
	}

	out, _, err = imageCLI(t, agent, append(base, "image", "list")...)
	if err != nil || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "cli-img") || !strings.Contains(out, "Alpine Linux") {
		t.Errorf("list: %v\n%s", err, out)
	}
	var list []image.Image
	out, _, _ = imageCLI(t, agent, append(base, "--json", "image", "list")...)
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
		t.Errorf("list --json: %v\n%s", err, out)
	}
	out, _, err = imageCLI(t, agent, append(base, "image", "inspect", "cli-img")...)
	if err != nil || !strings.Contains(out, `"fingerprint"`) {
		t.Errorf("inspect: %v\n%s", err, out)
	}

	// The SDK and the VM commands take the image by name.
	out, stderr, err = imageCLI(t, agent, append(base, "run", "--image", "cli-img", "--disk", "100", "--", "cat /etc/os-release; df -m / | tail -1")...)
	if err != nil || !strings.Contains(out, "ID=alpine") {
		t.Errorf("run --image: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	out, _, err = imageCLI(t, agent, append(base, "--json", "create", "--name", "from-img", "--image", "cli-img")...)
	if err != nil || !strings.Contains(out, `"image": "cli-img"`) {
		t.Errorf("create --image: %v\n%s", err, out)
	}
	if _, _, err := imageCLI(t, agent, append(base, "delete", "from-img")...); err != nil {
		t.Errorf("delete: %v", err)
	}
	if _, _, err := imageCLI(t, agent, append(base, "create", "--image", "nosuch")...); !errors.Is(err, smolvm.ErrInvalid) {
		t.Errorf("create --image nosuch: %v, want invalid", err)
	}

	out, _, err = imageCLI(t, agent, append(base, "--json", "image", "rm", "cli-img")...)
	if err != nil || !strings.Contains(out, `"cli-img"`) {
		t.Errorf("rm: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		kind string
	}{
		{[]string{"image", "inspect", "cli-img"}, "not_found"},
		{[]string{"image", "rm", "cli-img"}, "not_found"},
		{[]string{"image", "build", "--from", "ubuntu", "-t", "x"}, "invalid"},
		{[]string{"image", "build", "--from", "alpine", "-t", "../x"}, "invalid"},
		{[]string{"image", "build", "--from", "alpine", "--mirror", alpine, "-t", "tiny", "--size", "3"}, "invalid"},
		{[]string{"image", "inspect"}, "invalid"},
	} {
		_, _, err := imageCLI(t, agent, append(base, tc.args...)...)
		if got := errorKind(err); got != tc.kind {
			t.Errorf("%q: kind %q (%v), want %q", tc.args, got, err, tc.kind)
		}
	}
	vms, err := smolvm.List(context.Background(), smolvm.WithHome(home))
	if err != nil || len(vms) != 0 {
		t.Errorf("VMs left: %v %v", vms, err)
	}
}
