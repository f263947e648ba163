package main

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
)

// vmHost is where the commands' VMs, snapshots and images live: this
// machine through the SDK (localHost), or a smolvm server (remoteHost,
// --host). Each command is written once against it.
type vmHost interface {
	// Create makes a VM that is created, not started.
	Create(ctx context.Context, cfg smolvm.VMConfig, cold bool) (machine, error)
	// FromSnapshot makes a running VM from a snapshot.
	FromSnapshot(ctx context.Context, name string, o snapshotVM) (machine, error)
	// Open reconnects to the VM id.
	Open(ctx context.Context, id string) (machine, error)
	List(ctx context.Context) ([]smolvm.VMInfo, error)
	// ListLabeled lists the VMs whose labels match every selector,
	// KEY or KEY=VALUE.
	ListLabeled(ctx context.Context, selectors []string) ([]smolvm.VMInfo, error)

	ListSnapshots(ctx context.Context) ([]smolvm.SnapshotInfo, error)
	GetSnapshot(ctx context.Context, name string) (*smolvm.SnapshotInfo, error)
	RemoveSnapshot(ctx context.Context, name string) error
	// RemoveKeptDisk removes the disk a deleted VM kept (--retain-disk).
	RemoveKeptDisk(ctx context.Context, id string) error

	// BuildImage builds or finds the cached image; progress goes to stderr.
	BuildImage(ctx context.Context, name string, opts image.BuildOptions, stderr io.Writer) (*image.Image, error)
	Images(ctx context.Context) ([]*image.Image, error)
	Image(ctx context.Context, name string) (*image.Image, error)
	RemoveImage(ctx context.Context, name string) error

	Doctor(ctx context.Context) ([]smolvm.Check, error)
}

// machine is one VM as the commands use it; *smolvm.VM is most of it.
type machine interface {
	ID() string
	// Info is what the last call learnt about the VM.
	Info() smolvm.VMInfo
	Start(ctx context.Context) error
	Stop(ctx context.Context, timeout time.Duration) error
	Pause(ctx context.Context, toDisk bool) error
	Resume(ctx context.Context) error
	Delete(ctx context.Context) error
	Exec(ctx context.Context, cmd string, o smolvm.ExecOptions) (int, error)
	Shell(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, term string, width, height int, resize <-chan [2]int) (int, error)
	Env(ctx context.Context) (map[string]string, error)
	SetEnv(ctx context.Context, vars map[string]string) (map[string]string, error)
	UnsetEnv(ctx context.Context, keys ...string) (map[string]string, error)
	// SetEgressPolicy replaces the VM's egress policy (Info shows it after).
	SetEgressPolicy(ctx context.Context, p smolvm.EgressPolicy) error
	Upload(ctx context.Context, local, guestPath string) error
	Download(ctx context.Context, guestPath, local string) error
	// Files is the VM's file system, for the fs commands (fs.go).
	Files() guestFiles
	Expose(ctx context.Context, p portSpec) (smolvm.PortForward, error)
	Unexpose(ctx context.Context, hostAddr string, hostPort int) error
	Forwards(ctx context.Context) ([]smolvm.PortForward, error)
	// Logs copies the console log to w; with follow it goes on until ctx
	// ends or the VM stops.
	Logs(ctx context.Context, follow bool, w io.Writer) error
	Snapshot(ctx context.Context, name string, diskOnly bool) (*smolvm.SnapshotInfo, error)
	Fork(ctx context.Context, n int) ([]smolvm.VMInfo, error)
	SetLimits(ctx context.Context, l smolvm.Limits) error
	Metrics(ctx context.Context) (*smolvm.Metrics, error)
	// SetTTL gives the VM a lifetime from now (0 = none); onExpire "" keeps it.
	SetTTL(ctx context.Context, ttl time.Duration, onExpire string) error
	Close() error
	processes // argv commands and background processes (proc.go)
}

// snapshotVM is what a VM made from a snapshot may set.
type snapshotVM struct {
	id          string
	env         map[string]string
	bootTimeout time.Duration
}

// errLocalOnly is a command or flag that needs this machine's state
// directory, not a server's.
func errLocalOnly(what, instead string) error {
	return usagef("%s works on this machine's smolvm only, not through a server (--host / SMOLVM_HOST): %s", what, instead)
}

// localHost is this machine's smolvm, through the SDK.
type localHost struct{ g *globalOptions }

var _ vmHost = localHost{}

func (h localHost) Create(ctx context.Context, cfg smolvm.VMConfig, cold bool) (machine, error) {
	var opts []smolvm.Option
	if cold {
		opts = append(opts, smolvm.WithColdBoot())
	}
	vm, err := smolvm.NewFromConfig(ctx, cfg, h.g.sdk(opts...)...)
	if err != nil {
		return nil, err
	}
	return localVM{vm}, nil
}

func (h localHost) FromSnapshot(ctx context.Context, name string, o snapshotVM) (machine, error) {
	var opts []smolvm.Option
	if o.id != "" {
		opts = append(opts, smolvm.WithID(o.id))
	}
	if o.env != nil {
		opts = append(opts, smolvm.WithEnv(o.env))
	}
	if o.bootTimeout != 0 {
		opts = append(opts, smolvm.WithBootTimeout(o.bootTimeout))
	}
	vm, err := smolvm.FromSnapshot(ctx, name, h.g.sdk(opts...)...)
	if err != nil {
		return nil, err
	}
	return localVM{vm}, nil
}

func (h localHost) Open(ctx context.Context, id string) (machine, error) {
	vm, err := smolvm.FromID(ctx, id, h.g.sdk()...)
	if err != nil {
		return nil, err
	}
	return localVM{vm}, nil
}

func (h localHost) List(ctx context.Context) ([]smolvm.VMInfo, error) {
	return smolvm.List(ctx, h.g.sdk()...)
}

func (h localHost) ListSnapshots(ctx context.Context) ([]smolvm.SnapshotInfo, error) {
	return smolvm.ListSnapshots(ctx, h.g.sdk()...)
}

func (h localHost) GetSnapshot(ctx context.Context, name string) (*smolvm.SnapshotInfo, error) {
	return smolvm.GetSnapshot(ctx, name, h.g.sdk()...)
}

func (h localHost) RemoveSnapshot(ctx context.Context, name string) error {
	return smolvm.RemoveSnapshot(ctx, name, h.g.sdk()...)
}

func (h localHost) RemoveKeptDisk(ctx context.Context, id string) error {
	return smolvm.RemoveKeptDisk(ctx, id, h.g.sdk()...)
}

func (h localHost) BuildImage(ctx context.Context, name string, opts image.BuildOptions, stderr io.Writer) (*image.Image, error) {
	return h.g.builder(stderr).Build(ctx, name, opts)
}

func (h localHost) Images(context.Context) ([]*image.Image, error) { return h.g.builder(nil).List() }

func (h localHost) Image(_ context.Context, name string) (*image.Image, error) {
	return h.g.builder(nil).Get(name)
}

func (h localHost) RemoveImage(ctx context.Context, name string) error {
	return h.g.builder(nil).Remove(ctx, name)
}

func (h localHost) Doctor(ctx context.Context) ([]smolvm.Check, error) {
	return smolvm.Doctor(ctx, h.g.sdk()...), nil
}

// localVM is a VM of this machine: the SDK's handle, with the few
// methods whose options the CLI gives as plain values.
type localVM struct{ *smolvm.VM }

var _ machine = localVM{}

func (v localVM) Pause(ctx context.Context, toDisk bool) error {
	if toDisk {
		return v.VM.Pause(ctx, smolvm.ToDisk())
	}
	return v.VM.Pause(ctx)
}

func (v localVM) Expose(ctx context.Context, p portSpec) (smolvm.PortForward, error) {
	return v.VM.Expose(ctx, p.guestPort, p.hostPort, smolvm.OnHostAddr(p.addr))
}

func (v localVM) Snapshot(ctx context.Context, name string, diskOnly bool) (*smolvm.SnapshotInfo, error) {
	if diskOnly {
		return v.VM.Snapshot(ctx, name, smolvm.DiskOnly())
	}
	return v.VM.Snapshot(ctx, name)
}

func (v localVM) Fork(ctx context.Context, n int) ([]smolvm.VMInfo, error) {
	kids, err := v.VM.Fork(ctx, n)
	if err != nil {
		return nil, err
	}
	infos := make([]smolvm.VMInfo, 0, len(kids))
	for _, k := range kids {
		infos = append(infos, k.Info())
		k.Close()
	}
	return infos, nil
}

func (v localVM) Logs(ctx context.Context, keepOn bool, w io.Writer) error {
	files, err := v.ConsoleLogs(ctx)
	if err != nil {
		return err
	}
	if !keepOn {
		return copyFiles(w, files)
	}
	current := v.Info().ConsoleLog
	if err := copyFiles(w, slices.DeleteFunc(files, func(f string) bool { return f == current })); err != nil {
		return err
	}
	return follow(ctx, v.VM, current, w, 200*time.Millisecond)
}

// copyFiles streams the files to w, one after the other.
func copyFiles(w io.Writer, files []string) error {
	for _, name := range files {
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // rotated away meanwhile
		}
		if err != nil {
			return err
		}
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// follow copies the file at path to w as it grows, moving on to the new
// file when it is rotated or the VM restarts (which starts a new log),
// until ctx ends or the VM is not running. Each round first has smolvm
// move the guest's latest output into the file.
func follow(ctx context.Context, vm *smolvm.VM, path string, w io.Writer, every time.Duration) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		if _, err := vm.ConsoleLogs(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, smolvm.ErrNotFound) {
				return nil
			}
			return err
		}
		if fi, err := os.Stat(path); err == nil {
			if f != nil {
				if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
					io.Copy(w, f) // the rest of the old log
					f.Close()
					f = nil
				}
			}
			if f == nil {
				if f, err = os.Open(path); err != nil {
					return err
				}
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
		}
		if i%5 == 0 {
			if err := vm.Refresh(ctx); err != nil {
				if ctx.Err() != nil || errors.Is(err, smolvm.ErrNotFound) {
					return nil
				}
				return err
			}
			if vm.Status() != smolvm.StateRunning {
				if f != nil {
					_, err := io.Copy(w, f)
					return err
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// withVM reconnects to the VM id, runs fn with it and closes the handle.
func withVM(ctx context.Context, g *globalOptions, id string, fn func(machine) error) error {
	vm, err := g.vms().Open(ctx, id)
	if err != nil {
		return err
	}
	defer vm.Close()
	return fn(vm)
}

// mustLocal refuses what works on this machine's state only.
func (g *globalOptions) mustLocal(what, instead string) error {
	if g.remote != nil {
		return errLocalOnly(what, instead)
	}
	return nil
}
