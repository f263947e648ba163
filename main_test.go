package smolvm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
)

// testEnv is what the VM tests share: a state directory of their own, the
// smolvm CLI (built once; the agent goes in SMOLVM_AGENT), and why VM tests
// cannot run, if so.
var testEnv struct {
	home, bin, skip string
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "smolvm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// State directories do not know each other's IP leases, and a VM
	// holds no TAP (which the pool skips) while created, stopped or
	// hibernated; so each test package that boots VMs leases from a
	// part of the pool of its own.
	if os.Getenv("SMOLVM_SUBNET") == "" {
		os.Setenv("SMOLVM_SUBNET", "172.29.0.0/19")
	}
	testEnv.home = filepath.Join(tmp, "home")
	testEnv.bin = filepath.Join(tmp, "smolvm")
	switch {
	case lookPath("qemu-system-x86_64") == "":
		testEnv.skip = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
	case os.Getenv("SMOLVM_ALPINE_SOURCE") == "" && os.Getenv("SMOLVM_TEST_ONLINE") == "":
		testEnv.skip = "SMOLVM_ALPINE_SOURCE is unset: point it at a local Alpine minirootfs (or set SMOLVM_TEST_ONLINE=1 to download it)"
	}
	if testEnv.skip != "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "VM tests cannot run in CI:", testEnv.skip)
		return 1
	}
	if testEnv.skip == "" {
		// The CLI (for tests that drive a second process) and the guest agent.
		agent := filepath.Join(tmp, "smolvm-agent")
		for out, pkg := range map[string]string{testEnv.bin: "./cmd/smolvm", agent: "./cmd/smolvm-agent"} {
			build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		os.Setenv("SMOLVM_HOME", testEnv.home)
		os.Setenv("SMOLVM_AGENT", agent)
		os.Setenv("SMOLVM_KEEPER", testEnv.bin) // every running VM's keeper
	}
	code := m.Run()
	if testEnv.skip == "" {
		if leaks := findLeaks(); leaks != "" {
			fmt.Fprintln(os.Stderr, "LEAK after the tests:\n"+leaks)
			return 1
		}
	}
	return code
}

func lookPath(name string) string {
	p, _ := exec.LookPath(name)
	return p
}

// requireVM skips a test that boots VMs where this machine cannot.
func requireVM(t *testing.T) {
	t.Helper()
	if testEnv.skip != "" {
		t.Skip("VM test skipped: " + testEnv.skip)
	}
}

// findLeaks reports any VM row, QEMU process or TAP device the tests left.
func findLeaks() string {
	var b strings.Builder
	vms, err := smolvm.List(context.Background())
	if err != nil {
		fmt.Fprintf(&b, "list: %v\n", err)
	}
	for _, vm := range vms {
		fmt.Fprintf(&b, "VM row %s (%s)\n", vm.ID, vm.State)
	}
	snaps, err := smolvm.ListSnapshots(context.Background())
	if err != nil {
		fmt.Fprintf(&b, "list snapshots: %v\n", err)
	}
	for _, s := range snaps {
		// The default image's warm templates ("default-<fingerprint>") are
		// a cache the tests share.
		if !strings.HasPrefix(s.Name, "default-") || len(s.Dependents) > 0 {
			fmt.Fprintf(&b, "snapshot %s (of %s, used by %v)\n", s.Name, s.SourceVM, s.Dependents)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(testEnv.home, "snapshots")); err == nil {
		for _, e := range ents {
			if e.IsDir() && !slices.ContainsFunc(snaps, func(s smolvm.SnapshotInfo) bool { return s.Name == e.Name() }) {
				fmt.Fprintf(&b, "snapshot files %s\n", e.Name())
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte("qemu")) && usesDir(filepath.Base(filepath.Dir(p)), testEnv.home) {
			fmt.Fprintf(&b, "QEMU process %s\n", filepath.Base(filepath.Dir(p)))
		}
		if err == nil && bytes.Contains(data, []byte("\x00keeper\x00--dir="+testEnv.home)) {
			fmt.Fprintf(&b, "keeper process %s\n", filepath.Base(filepath.Dir(p)))
		}
	}
	for name, alias := range network.TAPAliases() {
		if strings.HasPrefix(alias, network.AliasPrefix+testEnv.home) {
			fmt.Fprintf(&b, "TAP device %s (%s)\n", name, alias)
		}
	}
	return b.String()
}

// newVM creates a VM for a test, registering cleanup before anything boots
// and printing the console when the test fails.
func newVM(t *testing.T, ctx context.Context, cfg smolvm.VMConfig, opts ...smolvm.Option) *smolvm.VM {
	t.Helper()
	requireVM(t)
	vm, err := smolvm.NewFromConfig(ctx, cfg, opts...)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(vm.Info().ConsoleLog); err == nil {
				t.Logf("console of %s:\n%s", vm.ID(), b)
			}
		}
		if err := vm.Delete(context.Background()); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Errorf("cleanup delete: %v", err)
		}
	})
	return vm
}

func startVM(t *testing.T, ctx context.Context, vm *smolvm.VM) {
	t.Helper()
	if err := vm.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
}

func run(t *testing.T, ctx context.Context, vm *smolvm.VM, cmd string, opts ...smolvm.RunOption) *smolvm.CommandResult {
	t.Helper()
	res, err := vm.Run(ctx, cmd, opts...)
	if err != nil {
		t.Fatalf("run %q: %v", cmd, err)
	}
	return res
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// usesDir reports whether process pid has a file under dir open (QEMU is
// handed its files as descriptors; its command line does not name them).
func usesDir(pid, dir string) bool {
	n, _ := strconv.Atoi(pid)
	for _, f := range hypervisor.OpenFiles(n) {
		if strings.HasPrefix(f, dir) {
			return true
		}
	}
	return false
}
