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
	"os/exec"
	"path/filepath"
	"sort"

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
	a, err := b.readAgent()
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

func (b *Builder) readAgent() (agentBinary, error) {
	data, err := ReadAgent(b.AgentPath())
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
const AgentEnv = "SMOLVM_AGENT"

// AgentPath returns the guest agent binary the builder uses: b.Agent,
// $SMOLVM_AGENT, smolvm-agent beside this program or on PATH, this program
// if it is smolvm (which is its own agent), or smolvm on PATH; "" if none.
func (b *Builder) AgentPath() string {
	if b.Agent != "" {
		return b.Agent
	}
	if a := os.Getenv(AgentEnv); a != "" {
		return a
	}
	exe, _ := os.Executable()
	if exe != "" {
		if p := filepath.Join(filepath.Dir(exe), "smolvm-agent"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("smolvm-agent"); err == nil {
		return p
	}
	if filepath.Base(exe) == "smolvm" {
		return exe
	}
	if p, err := exec.LookPath("smolvm"); err == nil {
		return p
	}
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// ReadAgent reads the agent binary and checks that it can run as a guest's
// init: a static x86-64 ELF (no interpreter, so no host libraries needed).
func ReadAgent(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("no smolvm guest agent binary: run ./scripts/build.sh and set SMOLVM_AGENT to bin/smolvm-agent (or put smolvm-agent or smolvm on PATH)")
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
