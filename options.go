package smolvm

import (
	"io"
	"log/slog"
	"maps"
	"os"
	"time"

	"github.com/smolvm/smolvm/image"
)

// Option configures New, NewFromConfig, FromID and the other entry points:
// where state lives and the collaborators smolvm uses, plus shorthands for
// the common VMConfig fields.
type Option func(*settings)

// Network modes for WithNetwork.
const (
	NetworkAuto = "auto" // TAP as root, user-mode otherwise
	NetworkTAP  = "tap"  // own TAP device and pool address; needs root
	NetworkUser = "user" // QEMU user-mode networking, SSH on a host port
)

type settings struct {
	home         string
	logger       *slog.Logger
	agent        string
	alpineSource string
	network      string
	subnet       string
	progress     io.Writer
	config       func(*VMConfig)
	snapshot     *snapshotPlan // set by FromSnapshot
	cold         bool          // WithColdBoot

	keeper      string            // WithKeeper
	labelFilter []string          // WithLabelFilter (List)
	secrets     map[string]string // WithStartSecrets: never stored
}

// WithHome sets the state directory (default $SMOLVM_HOME, else
// $XDG_STATE_HOME/smolvm, else ~/.local/state/smolvm).
func WithHome(dir string) Option { return func(s *settings) { s.home = dir } }

// WithLogger sets the logger for lifecycle steps (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// WithAgent sets the static binary that runs as the guest's init. Default:
// image.Builder.ResolveAgent's choice: $SMOLVM_AGENT; smolvm-agent next to
// this program, or this program if it is smolvm; smolvm-agent or smolvm on
// PATH if it is the same smolvm release; else one built once per smolvm
// version from this program's own smolvm module source with the go on
// PATH, kept in ~/.cache/smolvm/agent.
func WithAgent(path string) Option { return func(s *settings) { s.agent = path } }

// WithAlpineSource points the default image at a local copy or mirror of
// the Alpine minirootfs (default $SMOLVM_ALPINE_SOURCE, else Alpine's CDN).
func WithAlpineSource(src string) Option { return func(s *settings) { s.alpineSource = src } }

// WithNetwork picks the network mode: NetworkAuto (default), NetworkTAP or
// NetworkUser.
func WithNetwork(mode string) Option { return func(s *settings) { s.network = mode } }

// WithProgress receives progress lines of long steps such as the first
// image build.
func WithProgress(w io.Writer) Option { return func(s *settings) { s.progress = w } }

func withConfig(f func(*VMConfig)) Option {
	return func(s *settings) {
		prev := s.config
		s.config = func(c *VMConfig) {
			if prev != nil {
				prev(c)
			}
			f(c)
		}
	}
}

// WithID names the VM.
func WithID(id string) Option { return withConfig(func(c *VMConfig) { c.ID = id }) }

// WithCPUs sets the number of vCPUs (VMConfig.VCPUs: 0 = default, at most
// the host's CPUs).
func WithCPUs(n int) Option { return withConfig(func(c *VMConfig) { c.VCPUs = n }) }

// WithMemory sets guest memory in MiB (VMConfig.MemoryMiB: 0 = default,
// at most the host's RAM).
func WithMemory(mib int) Option { return withConfig(func(c *VMConfig) { c.MemoryMiB = mib }) }

// WithDisk sets the root disk size in MiB (VMConfig.DiskMiB: 0 = default,
// at most the free space of the state directory's filesystem).
func WithDisk(mib int) Option { return withConfig(func(c *VMConfig) { c.DiskMiB = mib }) }

// WithImage boots a built image by name.
func WithImage(name string) Option { return withConfig(func(c *VMConfig) { c.Image = name }) }

// WithEnv adds to VMConfig.Env, the VM's persistent environment.
func WithEnv(env map[string]string) Option {
	return withConfig(func(c *VMConfig) {
		if c.Env == nil {
			c.Env = map[string]string{}
		}
		maps.Copy(c.Env, env)
	})
}

// WithBootTimeout bounds Start (VMConfig.BootTimeout: 0 = default).
func WithBootTimeout(d time.Duration) Option {
	return withConfig(func(c *VMConfig) { c.BootTimeout = d })
}

// WithLimits sets the VM's limits (VMConfig.Limits); with FromSnapshot it
// replaces the snapshot's.
func WithLimits(l Limits) Option { return withConfig(func(c *VMConfig) { c.Limits = l }) }

func newSettings(opts []Option) settings {
	var s settings
	for _, o := range opts {
		o(&s)
	}
	if s.home == "" {
		s.home = DefaultHome()
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.network == "" {
		s.network = NetworkAuto
	}
	if s.subnet == "" {
		s.subnet = os.Getenv("SMOLVM_SUBNET")
	}
	return s
}

// DefaultHome is the state directory used when none is given: $SMOLVM_HOME,
// else $XDG_STATE_HOME/smolvm, else ~/.local/state/smolvm. Images are
// cached in the same directory.
func DefaultHome() string { return image.DefaultCacheDir() }
