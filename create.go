package smolvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/disk"
	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/initramfs"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/statedir"
	"github.com/smolvm/smolvm/internal/store"
	"golang.org/x/crypto/ssh"
)

// New creates an auto-configured VM from the default image: 1 vCPU,
// 512 MiB memory, 512 MiB disk, unless options say otherwise. The VM is
// created, not started; call Start.
func New(ctx context.Context, opts ...Option) (*VM, error) {
	return NewFromConfig(ctx, VMConfig{}, opts...)
}

// Start creates a VM as New does and starts it: one call to an SSH-ready
// VM. On failure nothing is left behind.
func Start(ctx context.Context, opts ...Option) (*VM, error) {
	vm, err := New(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if err := vm.Start(ctx); err != nil {
		vm.Delete(context.WithoutCancel(ctx))
		return nil, err
	}
	return vm, nil
}

// NewFromConfig creates a VM from cfg. Bad settings are rejected with an
// error matching ErrInvalid before anything is created; a failure later
// removes whatever this call had made.
func NewFromConfig(ctx context.Context, cfg VMConfig, opts ...Option) (_ *VM, err error) {
	s := newSettings(opts)
	if s.config != nil {
		s.config(&cfg)
	}
	diskDefaulted := cfg.DiskMiB == 0
	if cfg.ReuseDisk {
		cfg.RetainDiskOnDelete = true
	}
	cfg = cfg.withDefaults()
	host := probeHost(s.home)
	if err := cfg.validate(host); err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	cfg = cfg.withLifetime(time.Now())
	mode, err := resolveNetwork(s.network)
	if err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	if err := cfg.Limits.checkHost(mode); err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	if p := s.snapshot; p != nil && !p.rec.DiskOnly && p.rec.Network != "" && p.rec.Network != mode {
		// Its memory holds the network device as that mode set it up
		// (QEMU's user-mode network, or a TAP's vnet header), which a
		// machine of the other mode cannot take.
		return nil, opError("create", cfg.ID, &ValidationError{Field: "network", Value: mode,
			Reason: fmt.Sprintf("snapshot %q was taken with %s networking, and its memory restores only with it: use --network %s (smolvm.WithNetwork(%q)), or take a disk-only snapshot", p.name, p.rec.Network, p.rec.Network, p.rec.Network)})
	}
	pool, err := resolvePool(s.subnet)
	if err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	if cfg.ID == "" {
		cfg.ID = randomID()
	}
	backend, err := newBackend()
	if err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	if s.snapshot == nil && (cfg.KernelPath == "" || cfg.InitrdPath == "") {
		// Once, before the warm template and the cold path both need it.
		if s.agent, err = newBuilder(s).ResolveAgent(ctx); err != nil {
			return nil, opError("create", cfg.ID, err)
		}
	}
	if s.snapshot == nil && !s.cold && templateFits(cfg, diskDefaulted) {
		if plan, err := warmTemplate(ctx, s, mode); err != nil {
			s.logger.Warn("no warm template; booting cold", "err", err)
		} else {
			s.snapshot = plan
		}
	}
	var kernel, initrd, rootfs, bootArgs string
	if plan := s.snapshot; plan != nil {
		kernel, initrd, rootfs, bootArgs = plan.rec.Kernel, plan.rec.BaseInitrd, snapshotDisk(plan.dir), plan.rec.BootArgs
		diskDefaulted = false
	} else if kernel, initrd, rootfs, bootArgs, err = resolveBoot(ctx, s, cfg); err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	if fi, err := os.Stat(rootfs); err == nil && diskDefaulted {
		// An image built bigger than the default keeps its size.
		cfg.DiskMiB = max(cfg.DiskMiB, int((fi.Size()+1<<20-1)>>20))
		if err := checkDisk(cfg.DiskMiB, host); err != nil {
			return nil, opError("create", cfg.ID, err)
		}
	}
	if fi, err := os.Stat(newPaths(s.home, cfg.ID).disk()); err == nil && diskDefaulted && cfg.ReuseDisk {
		cfg.DiskMiB = int(fi.Size() >> 20) // a kept disk keeps its size
	}

	st, err := openStore(ctx, s)
	if err != nil {
		return nil, opError("create", cfg.ID, err)
	}
	v := &VM{s: s, st: st, id: cfg.ID, paths: newPaths(s.home, cfg.ID), owned: true}
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(v.log())
			st.Close()
			err = opError("create", cfg.ID, err)
		}
	}()

	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	// The VM's lock is taken before its row exists and held until the row
	// is complete: a row that is incomplete while nobody holds the lock is
	// then surely a create that was killed (reconcile removes it).
	_, statErr := os.Stat(v.paths.dir)
	if err := statedir.MkdirAll(v.s.home, v.paths.dir); err != nil {
		return nil, err
	}
	unlock, err := flock.Lock(ctx, v.paths.lock(), statedir.FileMode)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := st.CreateVM(ctx, store.VM{ID: cfg.ID, State: string(StateCreated), Config: cfgJSON}); err != nil {
		if errors.Is(statErr, os.ErrNotExist) && !errors.Is(err, store.ErrExists) {
			os.RemoveAll(v.paths.dir)
		}
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("%w: pick another id, or use the existing VM (smolvm info %s)", ErrAlreadyExists, cfg.ID)
		}
		return nil, err
	}
	undo.push("state row", func() error { return st.DeleteVM(context.WithoutCancel(ctx), cfg.ID) })

	if err := v.claimDir(ctx, cfg.ReuseDisk, &undo); err != nil {
		return nil, err
	}

	rt := runtimeRecord{Instance: newInstance(), Kernel: kernel, BootArgs: bootArgs, Initrd: v.paths.initrd(), BaseInitrd: initrd, Backend: backend.Name()}
	if mode == NetworkTAP {
		if rt.Network, err = leaseTAP(ctx, st, pool, cfg.ID, network.TAPName(rt.Instance)); err != nil {
			return nil, err
		}
	} else {
		rt.Network = NetworkInfo{
			Mode: NetworkUser, GuestIP: network.UserGuestIP.Addr().String(), Prefix: network.UserGuestIP.Bits(),
			Gateway: network.UserGateway.String(),
			Note:    "user-mode networking: the guest is reached through forwarded ports on 127.0.0.1; it has no route out (QEMU's user-mode network cannot keep a guest from the host's 127.0.0.1 services, so it runs with restrict=on) and reaches the network only through its egress proxy, an HTTP proxy (its http_proxy and https_proxy) that enforces its egress policy",
		}
	}

	if s.snapshot != nil {
		if err := v.applySnapshotPlan(ctx, s.snapshot, &rt); err != nil {
			return nil, err
		}
	} else {
		if !cfg.ReuseDisk {
			v.log().Debug("create: disk", "from", rootfs, "mib", cfg.DiskMiB)
			if err := disk.Clone(rootfs, v.paths.disk()); err != nil {
				return nil, err
			}
		}
		if err := disk.Resize(ctx, v.paths.disk(), cfg.DiskMiB); err != nil {
			return nil, err
		}
	}
	if rt.EnvAt, err = v.writeKeys(initrd, cfg.Env); err != nil {
		return nil, err
	}
	if err := v.update(ctx, func(_ *store.VM, r *runtimeRecord) error { *r = rt; return nil }); err != nil {
		return nil, err
	}
	v.log().Info("created", "network", mode, "ip", rt.Network.GuestIP)
	return v, nil
}

// claimDir makes the VM's directory, whose id the caller has just taken
// in the database. A disk kept from a deleted VM of this id is never
// removed here: reuse says boot it, else the create fails. Anything else
// there is debris of a crashed earlier create.
func (v *VM) claimDir(ctx context.Context, reuse bool, undo *undoStack) error {
	unlock, err := lockKept(ctx, v.s.home)
	if err != nil {
		return err
	}
	defer unlock()
	kept := keptDisk(v.paths.dir)
	switch {
	case kept && !reuse:
		return errKeptDisk(v.id, v.paths)
	case !kept && reuse:
		return &ValidationError{Field: "reuse disk", Value: v.paths.disk(),
			Reason: "no disk kept from a deleted VM with this id (RetainDiskOnDelete keeps one)"}
	case kept:
		undo.push("data dir", func() error { return removeAllButDisk(v.paths) })
		return nil
	}
	// The caller made the directory and holds its lock: keep that.
	if err := removeDebris(v.paths); err != nil {
		return err
	}
	undo.push("data dir", func() error { return os.RemoveAll(v.paths.dir) })
	return nil
}

// removeDebris empties a VM directory that has no row, but for the lock
// the caller holds.
func removeDebris(p paths) error {
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if path := filepath.Join(p.dir, e.Name()); path != p.lock() {
			if err := os.RemoveAll(path); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeKeys makes the VM's SSH keys and its own initramfs: the base, an
// archive with the guest's host key and the key the host logs in with,
// and last one with the env, which begins at envAt (see env.go).
func (v *VM) writeKeys(baseInitrd string, env map[string]string) (envAt int64, err error) {
	hostSigner, hostPEM, err := guest.GenerateKey()
	if err != nil {
		return 0, err
	}
	clientSigner, clientPEM, err := guest.GenerateKey()
	if err != nil {
		return 0, err
	}
	authKey := ssh.MarshalAuthorizedKey(clientSigner.PublicKey())
	files := map[string][]byte{
		v.paths.hostKey():      hostPEM,
		v.paths.hostKeyPub():   ssh.MarshalAuthorizedKey(hostSigner.PublicKey()),
		v.paths.clientKey():    clientPEM,
		v.paths.clientKeyPub(): authKey,
	}
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return 0, err
		}
	}
	if err := initramfs.Append(baseInitrd, v.paths.initrd(), []initramfs.File{
		{Name: initramfs.HostKeyFile, Mode: 0o600, Data: hostPEM},
		{Name: initramfs.AuthorizedKeysFile, Mode: 0o600, Data: authKey},
	}); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(v.paths.initrd(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if envAt, err = f.Seek(0, io.SeekEnd); err != nil {
		return 0, err
	}
	if err := initramfs.Write(f, []initramfs.File{envFile(env)}); err != nil {
		return 0, err
	}
	return envAt, f.Close()
}

// resolveBoot finds the kernel, agent initramfs, root filesystem and boot
// args for cfg, building the default image on first use.
func resolveBoot(ctx context.Context, s settings, cfg VMConfig) (kernel, initrd, rootfs, bootArgs string, err error) {
	b := newBuilder(s)
	if len(cfg.Mounts) > 0 {
		explicit := cfg.KernelPath != "" || os.Getenv(image.KernelEnv) != ""
		given := cfg.KernelPath
		if given == "" {
			if given, err = b.FindKernel(); err != nil {
				return
			}
		}
		if b.Kernel, err = mountKernel(given, explicit); err != nil {
			return
		}
		if cfg.KernelPath != "" {
			cfg.KernelPath = b.Kernel
		}
	}
	bootArgs = cfg.BootArgs
	if bootArgs == "" {
		bootArgs = image.SSHBootArgs
	}
	if cfg.KernelPath != "" {
		b.Kernel = cfg.KernelPath
		kernel, initrd = cfg.KernelPath, cfg.InitrdPath
		if initrd == "" {
			if _, initrd, err = b.Boot(ctx); err != nil {
				return
			}
		}
		return kernel, initrd, cfg.RootfsPath, bootArgs, nil
	}
	var img *image.Image
	if cfg.Image != "" {
		img, err = b.Get(cfg.Image)
		if err == nil {
			img.Kernel, img.Initrd, err = b.Boot(ctx)
		}
		if errors.Is(err, image.ErrNotFound) {
			err = &ValidationError{Field: "image", Value: fmt.Sprintf("%q", cfg.Image), Reason: "no such image; build it first (smolvm image build -t " + cfg.Image + ") or pick one of smolvm image list"}
		}
	} else {
		img, err = b.Default(ctx)
	}
	if err != nil {
		return
	}
	if cfg.BootArgs == "" && img.BootArgs != "" {
		bootArgs = img.BootArgs
	}
	return img.Kernel, img.Initrd, img.Rootfs, bootArgs, nil
}

func resolveNetwork(mode string) (string, error) {
	switch mode {
	case NetworkAuto:
		if network.CanUseTAP() {
			return NetworkTAP, nil
		}
		return NetworkUser, nil
	case NetworkTAP:
		if !network.CanUseTAP() {
			return "", &ValidationError{Field: "network", Value: mode, Reason: "TAP networking needs root and /dev/net/tun; use user networking"}
		}
		return NetworkTAP, nil
	case NetworkUser:
		return NetworkUser, nil
	}
	return "", &ValidationError{Field: "network", Value: fmt.Sprintf("%q", mode), Reason: "use auto, tap or user"}
}

// leaseTAP leases id an address from pool that no VM of this state
// directory holds and no interface on the host uses, for the TAP device
// tap.
func leaseTAP(ctx context.Context, st *store.Store, pool network.Pool, id, tap string) (NetworkInfo, error) {
	idx, err := st.LeaseIP(ctx, id, pool.Size(), func(idx int) bool {
		host, _, err := pool.Addrs(idx)
		return err != nil || network.AddrInUse(host.Masked())
	})
	if err != nil {
		return NetworkInfo{}, err
	}
	host, guestIP, err := pool.Addrs(idx)
	if err != nil {
		return NetworkInfo{}, err
	}
	return NetworkInfo{
		Mode: NetworkTAP, TAP: tap, HostIP: host.String(),
		GuestIP: guestIP.Addr().String(), Prefix: guestIP.Bits(), Gateway: host.Addr().String(),
		SSHAddr: guestIP.Addr().String() + ":22",
	}, nil
}

func resolvePool(subnet string) (network.Pool, error) {
	if subnet == "" {
		return network.Pool{Prefix: network.DefaultPool}, nil
	}
	p, err := network.ParsePool(subnet)
	if err != nil {
		return p, &ValidationError{Field: "subnet (SMOLVM_SUBNET)", Value: subnet, Reason: err.Error()}
	}
	return p, nil
}

func randomID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "vm-" + hex.EncodeToString(b)
}

// DefaultImage returns the default image's files and boot args, building
// it on first use, so they can be passed to NewFromConfig explicitly (the
// analogue of the reference's (kernel, rootfs) and SSH_BOOT_ARGS).
func DefaultImage(ctx context.Context, opts ...Option) (*image.Image, error) {
	s := newSettings(opts)
	agent, err := newBuilder(s).ResolveAgent(ctx)
	if err != nil {
		return nil, opError("default image", "", err)
	}
	s.agent = agent
	img, err := newBuilder(s).Default(ctx)
	return img, opError("default image", "", err)
}

func newBuilder(s settings) *image.Builder {
	return &image.Builder{CacheDir: s.home, Agent: s.agent, AlpineSource: s.alpineSource, Progress: s.progress, Logger: s.logger}
}
