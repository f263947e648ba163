package smolvm_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"

	"github.com/smolvm/smolvm"
)

// Small files as bytes, metadata, and errors that match as the os
// package's do.
func ExampleVM_FS() {
	ctx := context.Background()
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	gfs := vm.FS()
	if err := gfs.WriteFile(ctx, "/root/app/config.json", []byte(`{"debug":true}`), 0o600); err != nil {
		log.Fatal(err)
	}
	ents, err := gfs.ReadDir(ctx, "/root/app")
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range ents {
		fmt.Println(e.Name, e.Size, e.Perm)
	}
	if _, err := gfs.ReadFile(ctx, "/root/app/missing"); errors.Is(err, fs.ErrNotExist) {
		fmt.Println("no such file")
	}
}

// Watch a directory until ctx ends; Ready says when changes will be seen.
func ExampleFS_Watch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	vm, err := smolvm.Start(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(context.Background())
	if err := vm.FS().MkdirAll(ctx, "/root/out", 0); err != nil {
		log.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		<-ready
		vm.Run(ctx, "mkdir -p /root/out/logs && echo done > /root/out/logs/result")
	}()
	err = vm.FS().Watch(ctx, "/root/out", smolvm.WatchOptions{Recursive: true, Ready: func() { close(ready) }}, func(e smolvm.WatchEvent) {
		fmt.Println(e.Op, e.Path)
		if e.Op == smolvm.WatchModify && e.Path == "logs/result" {
			cancel()
		}
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}
