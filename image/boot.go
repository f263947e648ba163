package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/smolvm/smolvm/internal/agentbin"
	"github.com/smolvm/smolvm/internal/initramfs"
	"github.com/smolvm/smolvm/internal/statedir"
)

// KernelEnv names the environment variable that picks the guest kernel.
const KernelEnv = "SMOLVM_KERNEL"

// ErrNoKernel is returned when no guest kernel can be found.
var ErrNoKernel = errors.New("no guest kernel found (install one: apt-get install linux-image-cloud-amd64, or set " + KernelEnv + ")")

// FindKernel returns the kernel to boot: b.Kernel, $SMOLVM_KERNEL, or the
// newest /boot/vmlinuz-*, preferring Debian's cloud kernel, which is made
// for VMs.
func (b *Builder) FindKernel() (string, error) {
	for _, k := range []string{b.Kernel, os.Getenv(KernelEnv)} {
		if k != "" {
			if _, err := os.Stat(k); err != nil {
				return "", fmt.Errorf("kernel: %w", err)
			}
			return k, nil
		}
	}
	cloud, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
	all, _ := filepath.Glob("/boot/vmlinuz-*")
	for _, list := range [][]string{cloud, all} {
		if len(list) > 0 {
			sort.Strings(list)
			return list[len(list)-1], nil
		}
	}
	return "", ErrNoKernel
}

// Boot returns the kernel and the agent initramfs for it, building the
// initramfs on first use. The initramfs is cached by the hash of the agent
// and the kernel release, so a rebuilt agent is picked up at once.
func (b *Builder) Boot(ctx context.Context) (kernel, initrd string, err error) {
	a, err := b.readAgent(ctx)
	if err != nil {
		return "", "", err
	}
	return b.boot(ctx, a)
}

// agentBinary is the agent read once: its bytes and sha256.
type agentBinary struct {
	data []byte
	sum  [32]byte
}

func (b *Builder) readAgent(ctx context.Context) (agentBinary, error) {
	path, err := b.ResolveAgent(ctx)
	if err != nil {
		return agentBinary{}, err
	}
	data, err := ReadAgent(path)
	if err != nil {
		return agentBinary{}, err
	}
	return agentBinary{data, sha256.Sum256(data)}, nil
}

// version is a short hash of the agent, recorded in images and part of
// their fingerprint.
func (a agentBinary) version() string { return hex.EncodeToString(a.sum[:8]) }

func (b *Builder) boot(ctx context.Context, agent agentBinary) (kernel, initrd string, err error) {
	kernel, err = b.FindKernel()
	if err != nil {
		return "", "", err
	}
	release, err := initramfs.KernelRelease(kernel)
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(append(agent.sum[:], release...))
	dir := filepath.Join(b.cacheDir(), "initramfs")
	initrd = filepath.Join(dir, release+"-"+hex.EncodeToString(sum[:8])+".cpio")
	if _, err := os.Stat(initrd); err == nil {
		return kernel, initrd, nil
	}
	files, err := initramfs.Base(agent.data, filepath.Join("/lib/modules", release))
	if err != nil {
		return "", "", err
	}
	if err := b.mkdir(dir); err != nil {
		return "", "", err
	}
	tmp, err := os.CreateTemp(dir, ".initrd-")
	if err != nil {
		return "", "", err
	}
	defer os.Remove(tmp.Name())
	err = initramfs.Write(tmp, files)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), statedir.FileMode)
	}
	if err != nil {
		return "", "", fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), initrd); err != nil {
		return "", "", err
	}
	return kernel, initrd, nil
}

// AgentEnv names the environment variable that picks the agent binary.
const AgentEnv = agentbin.Env

// AgentPath returns the guest agent binary the builder uses without
// building one: b.Agent; $SMOLVM_AGENT; smolvm-agent beside this program,
// or this program if it is smolvm; smolvm-agent or smolvm on PATH if it is
// the same smolvm release as this program. "" if none: see ResolveAgent.
func (b *Builder) AgentPath() string {
	if b.Agent != "" {
		return b.Agent
	}
	return agentbin.Find(b.logger())
}

// ResolveAgent returns AgentPath, or when there is none an agent built
// from this program's own smolvm module source with the Go toolchain:
// once per smolvm version, kept in the user's cache directory
// (~/.cache/smolvm/agent, private to the user), progress to b.Progress.
// Without a Go toolchain it fails saying to set SMOLVM_AGENT.
func (b *Builder) ResolveAgent(ctx context.Context) (string, error) {
	if p := b.AgentPath(); p != "" {
		return p, nil
	}
	return agentbin.Provision(ctx, agentbin.Options{CacheDir: agentbin.DefaultCacheDir(b.cacheDir()), Progress: b.Progress, Logger: b.logger()})
}

// ReadAgent reads the agent binary and checks that it can run as a guest's
// init: a static x86-64 ELF (no interpreter, so no host libraries needed).
func ReadAgent(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("no smolvm guest agent binary: set SMOLVM_AGENT to a static smolvm-agent (./scripts/build.sh makes bin/smolvm-agent)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("agent %s is not an ELF binary: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("agent %s is dynamically linked; rebuild it with CGO_ENABLED=0", path)
		}
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("agent %s is built for %v, want x86-64", path, f.Machine)
	}
	return data, nil
}
