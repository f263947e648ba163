package smolvm_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/smolvm/smolvm"
)

// A program run without a shell: its arguments arrive as given.
func ExampleVM_Command() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	cmd := vm.Command(ctx, "printf", "%s\n", "no $(expansion) here", "*")
	cmd.Dir, cmd.User = "/tmp", "nobody"
	out, err := cmd.Output()
	if err != nil {
		log.Fatal(err) // a missing program is an error matching smolvm.ErrNotFound
	}
	fmt.Print(string(out))
}

// A background process: it runs in the guest's agent, and any handle,
// from any host process, reaches it by id.
func ExampleVM_StartProcess() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	p, err := vm.StartProcess(ctx, smolvm.ProcessSpec{Shell: "for i in 1 2 3; do echo $i; sleep 1; done"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("started", p.ID(), "pid", p.PID())
	// Later, elsewhere: replay what it wrote, follow it to its end.
	same, err := vm.Process(ctx, p.ID())
	if err != nil {
		log.Fatal(err)
	}
	info, err := same.Attach(ctx, os.Stdout, os.Stderr, smolvm.AttachOptions{Follow: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", info.Exit.ExitCode)
}

// A terminal session driven from Go: size, input, output, resize, exit.
func ExampleVM_StartTerminal() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	ts := vm.StartTerminal(ctx, "read name; echo hello $name; stty size", smolvm.ExecOptions{}, smolvm.Terminal{Width: 100, Height: 30})
	defer ts.Close()
	ts.Write([]byte("world\n"))
	io.Copy(os.Stdout, ts) // the terminal's output until the command exits
	code, err := ts.Wait()
	fmt.Println("exit", code, err)
}
