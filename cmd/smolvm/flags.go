package main

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"

	"github.com/smolvm/smolvm/internal/shell"
)

// vmFlags are the VM settings create and run share.
type vmFlags struct {
	name        string
	cpus        int
	memory      int
	disk        int
	env         []string
	image       string
	bootTimeout time.Duration
	retainDisk  bool
	mounts      []string
	noEgress    bool
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.IntVar(&f.cpus, "cpus", smolvm.DefaultVCPUs, "number of vCPUs")
	fs.IntVar(&f.memory, "memory", smolvm.DefaultMemoryMiB, "guest memory in MiB")
	fs.IntVar(&f.disk, "disk", smolvm.DefaultDiskMiB, "root disk size in MiB")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable in the guest, NAME=VALUE (repeatable)")
	fs.StringVar(&f.image, "image", "", "boot a built image by name (default: the Alpine image)")
	fs.DurationVar(&f.bootTimeout, "boot-timeout", smolvm.DefaultBootTimeout, "give up booting after this long")
	fs.StringArrayVar(&f.mounts, "mount", nil, "share a host folder, HOST[:GUEST][:rw] (read-only unless :rw; GUEST defaults to /mnt/NAME; repeatable)")
	fs.BoolVar(&f.noEgress, "no-egress", false, "cut the VM off from the host's networks (exposed ports still work)")
}

// parseMount reads HOST[:GUEST][:rw|ro].
func parseMount(s string) (smolvm.Mount, error) {
	m, err := smolvm.ParseMount(s)
	if err != nil {
		return m, usagef("--mount: %v", err)
	}
	return m, nil
}

// config turns the flags into a VMConfig; the SDK validates the values.
func (f *vmFlags) config() (smolvm.VMConfig, error) {
	env, err := parseEnv(f.env)
	if err != nil {
		return smolvm.VMConfig{}, err
	}
	var mounts []smolvm.Mount
	for _, s := range f.mounts {
		m, err := parseMount(s)
		if err != nil {
			return smolvm.VMConfig{}, err
		}
		mounts = append(mounts, m)
	}
	return smolvm.VMConfig{
		Mounts:             mounts,
		NoEgress:           f.noEgress,
		ID:                 f.name,
		VCPUs:              f.cpus,
		MemoryMiB:          f.memory,
		DiskMiB:            f.disk,
		Image:              f.image,
		Env:                env,
		BootTimeout:        f.bootTimeout,
		RetainDiskOnDelete: f.retainDisk,
	}, nil
}

// parseEnv parses NAME=VALUE pairs; the value may hold '=' and be empty.
// It returns nil for no pairs.
func parseEnv(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	env := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("environment variable %q: want NAME=VALUE", p)
		}
		env[k] = v
	}
	return env, nil
}

// shellJoin makes the command line the guest's shell runs from args: one
// argument is taken as a shell command as it is (`smolvm run -- 'ls | wc
// -l'`); several are quoted each, so they reach the program unchanged
// (`smolvm run -- sh -c 'echo $HOME'`).
func shellJoin(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
		if i == 0 && quoted[0] == a && strings.Contains(a, "=") {
			// A plain first word with '=' would be a variable assignment.
			quoted[0] = "'" + a + "'"
		}
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes s for a POSIX shell, leaving plain words alone.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	plain := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return shell.Quote(s)
}
