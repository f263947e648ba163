package smolvm_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestConsoleBounded has the guest write far more to its serial console
// than the host keeps: the log files stay under their cap, and `smolvm
// logs` (plain and -f) still shows the latest line.
func TestConsoleBounded(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithColdBoot()) // the boot log is under test
	startVM(t, ctx, vm)
	files, err := vm.ConsoleLogs(ctx)
	if err != nil || len(files) != 1 {
		t.Fatalf("ConsoleLogs: %v, %v", files, err)
	}
	if b, _ := os.ReadFile(files[0]); !bytes.Contains(b, []byte("smolvm-agent")) {
		t.Errorf("the boot messages are not in the log: %q", b)
	}

	var tail tailBuffer
	follow := exec.Command(testEnv.bin, "logs", "-f", vm.ID())
	follow.Stdout, follow.Stderr = &tail, &tail
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- follow.Wait() }()
	defer follow.Process.Kill()

	const spam = 8 << 20
	res := run(t, ctx, vm, "yes 'the guest writes to its console without end' | head -c 8388608 > /dev/ttyS0; echo CONSOLE-LAST-LINE > /dev/ttyS0")
	if !res.OK() {
		t.Fatalf("guest: %+v", res)
	}
	out, err := exec.CommandContext(ctx, testEnv.bin, "logs", vm.ID()).Output()
	if err != nil {
		t.Fatalf("smolvm logs: %v", err)
	}
	if !strings.HasSuffix(string(out), "CONSOLE-LAST-LINE\r\n") && !strings.HasSuffix(string(out), "CONSOLE-LAST-LINE\n") {
		t.Errorf("smolvm logs does not end with the latest line: ...%q", out[max(0, len(out)-200):])
	}
	var total int64
	for _, name := range []string{"console.log", "console.log.1"} {
		if fi, err := os.Stat(vm.DataDir() + "/" + name); err == nil {
			if fi.Size() > smolvm.ConsoleLogMax {
				t.Errorf("%s is %d bytes, over the cap of %d", name, fi.Size(), smolvm.ConsoleLogMax)
			}
			total += fi.Size()
		}
	}
	t.Logf("the guest wrote %d MiB; the host keeps %d KiB; logs printed %d KiB", spam>>20, total>>10, len(out)>>10)
	if int64(len(out)) != total {
		t.Errorf("smolvm logs printed %d bytes of %d", len(out), total)
	}

	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(tail.String(), "CONSOLE-LAST-LINE") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(tail.String(), "CONSOLE-LAST-LINE") {
		t.Errorf("smolvm logs -f did not show the latest line; its tail: %q", tail.String())
	}
	if err := vm.Stop(ctx, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Error("smolvm logs -f did not end when the VM stopped")
	}
}

// tailBuffer keeps the last 64 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 64<<10 {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-64<<10:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// TestConsoleBoundedDuringBoot boots an image whose shell floods the
// console from the moment the agent becomes ready (the agent runs it once
// then), before the host has moved the console to the ring: the boot log
// stays bounded too. (Here the host wins that race by far; consoleGuard
// bounds the log should it not.)
func TestConsoleBoundedDuringBoot(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 3*time.Minute)
	img, err := smolvm.DefaultImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(t.TempDir(), "hostile.ext4")
	if out, err := exec.Command("cp", "--sparse=always", img.Rootfs, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	script := filepath.Join(t.TempDir(), "sh")
	os.WriteFile(script, []byte("#!/bin/busybox sh\n"+
		"/bin/busybox sh -c 'while :; do /bin/busybox yes the image floods the console; done > /dev/console' </dev/null >/dev/null 2>&1 &\n"+
		"exec /bin/busybox sh \"$@\"\n"), 0o755)
	for _, req := range []string{"rm /bin/sh", "write " + script + " /bin/sh", "sif /bin/sh mode 0100755"} {
		if out, err := exec.Command("debugfs", "-w", "-R", req, rootfs).CombinedOutput(); err != nil {
			t.Fatalf("debugfs %s: %v %s", req, err, out)
		}
	}
	vm := newVM(t, ctx, smolvm.VMConfig{KernelPath: img.Kernel, InitrdPath: img.Initrd, RootfsPath: rootfs, BootArgs: img.BootArgs})
	startVM(t, ctx, vm)
	time.Sleep(3 * time.Second) // the flood goes on
	fi, err := os.Stat(vm.Info().ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("console.log after boot and 3 s of flooding: %d KiB", fi.Size()>>10)
	if fi.Size() > smolvm.ConsoleLogMax+512<<10 {
		t.Errorf("console.log is %d bytes after the boot, over the cap of %d", fi.Size(), smolvm.ConsoleLogMax)
	}
	files, err := vm.ConsoleLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	flooded := false
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Size() > smolvm.ConsoleLogMax {
			t.Errorf("%s is %d bytes, over the cap", f, fi.Size())
		}
		b, _ := os.ReadFile(f)
		flooded = flooded || bytes.Contains(b, []byte("the image floods the console"))
	}
	if !flooded {
		t.Error("the image's shell did not flood the console: the test proves nothing")
	}
}
