package smolvm_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
)

// An auto-configured VM: the default Alpine image, 1 vCPU, 512 MiB.
func Example() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx) // create + start: returns once commands can run
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	res, err := vm.Run(ctx, "uname -a")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

// The scoped helper: the VM is stopped and deleted when fn returns.
func ExampleWith() {
	ctx := context.Background()
	cfg := smolvm.VMConfig{MemoryMiB: 1024, DiskMiB: 2048, Env: map[string]string{"MODE": "test"}}
	err := smolvm.With(ctx, cfg, func(vm *smolvm.VM) error {
		res, err := vm.Run(ctx, "df -h /; echo $MODE", smolvm.WithTimeout(30*time.Second))
		if err != nil {
			return err
		}
		fmt.Print(res.Output())
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Explicit kernel and root filesystem, as the reference's VMConfig takes.
func ExampleNewFromConfig() {
	ctx := context.Background()
	img, err := smolvm.DefaultImage(ctx) // kernel, initramfs, rootfs and boot args
	if err != nil {
		log.Fatal(err)
	}
	vm, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{
		ID: "worker-1", VCPUs: 2, MemoryMiB: 1024,
		KernelPath: img.Kernel, RootfsPath: img.Rootfs, BootArgs: image.SSHBootArgs,
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(vm.ID(), vm.IP(), vm.Status())
	vm.Close() // the VM keeps running; smolvm.FromID(ctx, "worker-1") reconnects
}

// Reconnect from another process and stream a command's output.
func ExampleFromID() {
	ctx := context.Background()
	vm, err := smolvm.FromID(ctx, "worker-1")
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()
	code, err := vm.Exec(ctx, "for i in 1 2 3; do echo $i; sleep 1; done", smolvm.ExecOptions{Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", code)
}
