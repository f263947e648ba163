package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/statedir"
)

// A VM of the default image and machine does not boot: it resumes from a
// template, a memory snapshot of a VM that booted that image and machine
// once, made on first use (synchronously: that first create takes a cold
// boot and a capture longer) and cached under a name that carries a
// fingerprint of everything the memory depends on: the image's kernel,
// agent initramfs and root filesystem, the QEMU binary, the backend and
// the machine's size and network mode. When any of them changes a new
// template is made and templates no VM uses any more are removed.
// WithColdBoot, or any setting the template does not have (another image,
// size, kernel, mounts, a kept disk), boots instead; VMInfo.BootPath says
// which way a VM came up.

// templatePrefix starts the names of default templates.
const templatePrefix = "default-"

// WithColdBoot makes New and NewFromConfig boot the VM from its image
// even when a warm template would fit.
func WithColdBoot() Option { return func(s *settings) { s.cold = true } }

// templateFits reports whether a template of the default machine serves
// cfg (after defaults); diskDefaulted says the disk size was not asked.
func templateFits(cfg VMConfig, diskDefaulted bool) bool {
	return cfg.Image == "" && cfg.KernelPath == "" && cfg.RootfsPath == "" && cfg.InitrdPath == "" &&
		cfg.BootArgs == "" && len(cfg.Mounts) == 0 && !cfg.RetainDiskOnDelete && !cfg.ReuseDisk &&
		diskDefaulted && cfg.VCPUs == DefaultVCPUs && cfg.MemoryMiB == DefaultMemoryMiB
}

// warmTemplate returns the default template for this host, making it if
// there is none yet.
func warmTemplate(ctx context.Context, s settings, mode string) (*snapshotPlan, error) {
	backend, err := newBackend()
	if err != nil {
		return nil, err
	}
	if !backend.Capabilities().Snapshot {
		return nil, fmt.Errorf("%w: the %s backend has no snapshots", ErrInvalid, backend.Name())
	}
	kernel, initrd, rootfs, bootArgs, err := resolveBoot(ctx, s, VMConfig{})
	if err != nil {
		return nil, err
	}
	print := currentHostPrint(backend, kernel)
	sum := sha256.New()
	for _, part := range []string{print.QEMU, print.Kernel, print.Backend, fileStamp(initrd), fileStamp(rootfs), bootArgs, mode,
		fmt.Sprint(DefaultVCPUs, DefaultMemoryMiB, DefaultDiskMiB)} {
		fmt.Fprintf(sum, "%s\x00", part)
	}
	fp := hex.EncodeToString(sum.Sum(nil))[:12]
	name := templatePrefix + fp

	if err := statedir.MkdirAll(s.home, snapshotsDir(s.home)); err != nil {
		return nil, err
	}
	unlock, err := flock.Lock(ctx, filepath.Join(snapshotsDir(s.home), ".default.lock"), statedir.FileMode)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if plan, err := loadSnapshotPlan(ctx, s, name); err == nil {
		return plan, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}

	s.logger.Info("making the warm template of the default image", "name", name)
	ts := s
	ts.cold, ts.config, ts.secrets = true, nil, nil // the template is nobody's: no secrets in its memory
	vm, err := NewFromConfig(ctx, VMConfig{ID: "smolvm-template-" + fp}, func(o *settings) { *o = ts })
	if err != nil {
		return nil, fmt.Errorf("warm template: %w", err)
	}
	defer vm.Delete(context.WithoutCancel(ctx))
	if err := vm.Start(ctx); err != nil {
		return nil, fmt.Errorf("warm template: %w", err)
	}
	if _, err := vm.snapshot(ctx, name, snapshotOptions{}); err != nil {
		return nil, fmt.Errorf("warm template: %w", err)
	}
	removeOldTemplates(ctx, s, name)
	return loadSnapshotPlan(ctx, s, name)
}

// removeOldTemplates removes default templates other than keep that no VM
// uses any more.
func removeOldTemplates(ctx context.Context, s settings, keep string) {
	st, err := openStore(ctx, s)
	if err != nil {
		return
	}
	defer st.Close()
	rows, err := st.ListSnapshots(ctx)
	if err != nil {
		return
	}
	for _, row := range rows {
		if strings.HasPrefix(row.Name, templatePrefix) && row.Name != keep {
			removeSnapshot(ctx, s, st, row.Name) // refused while VMs use it
		}
	}
}
