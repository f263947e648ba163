package smolvm

import (
	"context"
	"errors"
)

// With creates a VM from cfg, starts it, and runs fn with it; then stops
// and deletes it, whatever fn returned. It is the Go form of the
// reference's `with SmolVM(...) as vm:`.
func With(ctx context.Context, cfg VMConfig, fn func(*VM) error, opts ...Option) error {
	vm, err := NewFromConfig(ctx, cfg, opts...)
	if err != nil {
		return err
	}
	return Use(ctx, vm, fn)
}

// Use starts vm if needed, runs fn, and then cleans up as the handle's
// ownership says: a VM this handle created is stopped and deleted; a
// reconnected one (FromID) is stopped but kept. The handle is closed.
func Use(ctx context.Context, vm *VM, fn func(*VM) error) (err error) {
	defer func() {
		cleanup := context.WithoutCancel(ctx)
		var cerr error
		if vm.Owned() {
			cerr = vm.Delete(cleanup)
		} else {
			cerr = vm.Stop(cleanup, 0)
			vm.Close()
		}
		err = errors.Join(err, cerr)
	}()
	if err := vm.Start(ctx); err != nil {
		return err
	}
	return fn(vm)
}
