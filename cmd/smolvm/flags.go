package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
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
	cold        bool
	limits      limitFlags
	egress      egressFlags
	dnsUpstream string
	life        lifeFlags
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	// Zero leaves each setting to the SDK, which picks the default (and
	// for the disk, the image's size when that is bigger).
	fs.IntVar(&f.cpus, "cpus", 0, fmt.Sprintf("number of vCPUs, at most the host's CPUs (0 = default, %d)", smolvm.DefaultVCPUs))
	fs.IntVar(&f.memory, "memory", 0, fmt.Sprintf("guest memory in MiB, at most the host's RAM (0 = default, %d)", smolvm.DefaultMemoryMiB))
	fs.IntVar(&f.disk, "disk", 0, fmt.Sprintf("root disk size in MiB, at most the free space of the state directory's filesystem (0 = default: %d, or the image's size if bigger)", smolvm.DefaultDiskMiB))
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable in the guest, NAME=VALUE (repeatable)")
	fs.StringVar(&f.image, "image", "", "boot a built image by name (default: the Alpine image)")
	fs.Var(secondsFlag(&f.bootTimeout), "boot-timeout", fmt.Sprintf("give up booting after this long: seconds, or a duration such as 1.5s or 2m (0 = default, %s)", smolvm.DefaultBootTimeout))
	fs.StringArrayVar(&f.mounts, "mount", nil, "share a host folder, HOST[:GUEST][:rw] (read-only unless :rw; GUEST defaults to /mnt/NAME; repeatable)")
	fs.BoolVar(&f.noEgress, "no-egress", false, "cut the VM off from the host's networks (exposed ports still work)")
	f.egress.register(cmd)
	fs.StringVar(&f.dnsUpstream, "dns-upstream", "", "the DNS server the VM's allowed names are forwarded to, ADDR[:PORT] (default $SMOLVM_DNS_UPSTREAM, else the host's /etc/resolv.conf)")
	fs.BoolVar(&f.cold, "cold", false, "boot the VM even when the default image's warm template would resume it (info shows boot_path)")
	f.limits.register(fs)
	f.life.register(cmd)
}

// seconds is a duration flag that also takes a plain number as seconds,
// so `--timeout 5` means five seconds, as the help of every timeout says.
type seconds struct{ d *time.Duration }

func secondsFlag(d *time.Duration) seconds { return seconds{d} }

// parseSeconds reads a plain number as seconds ("5", "1.5") or a Go
// duration ("1.5s", "2m", "100ms"); negative durations are refused.
func parseSeconds(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > math.MaxInt64/float64(time.Second) {
			return 0, errors.New("want seconds (5) or a duration (1.5s, 2m)")
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

func (s seconds) Set(v string) error {
	d, err := parseSeconds(v)
	if err != nil {
		return err
	}
	*s.d = d
	return nil
}

func (s seconds) String() string {
	if s.d == nil || *s.d == 0 {
		return "0" // pflag shows no "(default ...)" for "0"
	}
	return s.d.String()
}

func (s seconds) Type() string { return "seconds" }

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
	cfg := smolvm.VMConfig{
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
		Limits:             f.limits.limits(),
		Egress:             f.egress.policy(false),
		DNSUpstream:        f.dnsUpstream,
	}
	return cfg, f.life.apply(&cfg)
}

// parseEnv parses NAME=VALUE pairs; the value may hold '=' and be empty.
// Names are checked as the SDK checks them. It returns nil for no pairs.
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
		if err := smolvm.ValidateEnvName(k); err != nil {
			return nil, err
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
