package smolvm_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/smolvm/smolvm"
)

// A sandbox that deletes itself after ten minutes, whether or not this
// program still runs: its keeper (smolvm keeper) sees to it. SetTTL gives
// it more time.
func ExampleWithTTL() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx, smolvm.WithTTL(10*time.Minute, smolvm.ExpireDelete),
		smolvm.WithLabels(map[string]string{"owner": "agent-7"}))
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close() // the VM runs on; its lifetime ends it
	fmt.Println(vm.ID(), "ends at", vm.Info().Config.ExpiresAt)
	if err := vm.SetTTL(ctx, time.Hour, ""); err != nil {
		log.Fatal(err)
	}
}

// Secrets reach the guest's commands as environment variables and are
// never written to the host's disk: for one command, or for every command
// until the VM stops.
func ExampleWithSecret() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx, smolvm.WithStartSecrets(map[string]string{"API_TOKEN": os.Getenv("API_TOKEN")}))
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	res, err := vm.Run(ctx, `curl -sH "Authorization: Bearer $API_TOKEN" -H "X-Key: $ONE_KEY" https://example.org/`,
		smolvm.WithSecret("ONE_KEY", os.Getenv("ONE_KEY")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

// The VMs an agent made, by label.
func ExampleWithLabelFilter() {
	vms, err := smolvm.List(context.Background(), smolvm.WithLabelFilter("owner=agent-7"))
	if err != nil {
		log.Fatal(err)
	}
	for _, vm := range vms {
		fmt.Println(vm.ID, vm.State, vm.Config.ExpiresAt)
	}
}
