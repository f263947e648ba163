// Command smolvm manages microVMs; inside a guest it is also the init.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/agent"
)

func main() {
	if agent.Main() {
		return
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	vm, err := smolvm.New(ctx, smolvm.WithLogger(log), smolvm.WithProgress(os.Stderr))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	defer vm.Delete(ctx)
	if err := vm.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	res, err := vm.Run(ctx, strings.Join(os.Args[1:], " "))
	fmt.Printf("%+v %v\n", res, err)
}
