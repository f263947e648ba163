// Command smolvm creates, runs and manages QEMU microVMs. Inside a guest
// the same binary is the init and the SSH agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/smolvm/smolvm/internal/agent"
)

func main() {
	if agent.Main() {
		return
	}
	// Ctrl-C and SIGTERM cancel the context; commands still clean up (run
	// deletes its VM) with a context that outlives the cancellation.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
