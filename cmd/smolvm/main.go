// Command smolvm creates, runs and manages QEMU microVMs. Inside a guest
// the same binary is the init and the SSH agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/smolvm/smolvm/internal/agent"
	"github.com/smolvm/smolvm/internal/egress"
)

func main() {
	if agent.Main() {
		return
	}
	if len(os.Args) == 3 && os.Args[1] == egress.RelayCommand {
		os.Exit(relay(os.Args[2]))
	}
	// Ctrl-C and SIGTERM cancel the context; commands still clean up (run
	// deletes its VM) with a context that outlives the cancellation.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
