// Command smolvm-agent is the guest half of smolvm alone: PID 1 of every
// VM. It is the same code the smolvm binary runs as init, without the
// host's packages, so the initramfs it goes into is small and boots faster.
// The build scripts embed it in smolvm (see internal/agentbin).
package main

import (
	"fmt"
	"os"

	"github.com/smolvm/smolvm/internal/agent"
)

func main() {
	if agent.Main() {
		return
	}
	_, why := agent.IsGuestInit()
	fmt.Fprintf(os.Stderr, "smolvm-agent runs only as the init of a smolvm VM, and this is not one: %s.\nUse smolvm on the host.\n", why)
	os.Exit(2)
}
