package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/agentbin"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/apiclient"
)

// globalOptions holds the persistent flags and what is derived from them
// before a command runs.
type globalOptions struct {
	home         string
	alpineSource string
	network      string
	verbose      bool
	json         bool
	host         string // --host / SMOLVM_HOST: a server to talk to instead
	token        string // --token / SMOLVM_TOKEN

	remote *apiclient.Client // set in setup when host is

	agent    string       // this executable: the guest agent
	logger   *slog.Logger // set in PersistentPreRunE
	progress io.Writer    // stderr when it is a terminal or --verbose
	// ran is set once flags and arguments were accepted: an error before
	// it is a usage error.
	ran bool
	// startSecrets are create's or start's --secret: handed to the VM at
	// its start, never stored.
	startSecrets map[string]string
}

// sdk returns the options every SDK call gets: state dir, agent, network
// mode, image source, logger and progress output.
func (g *globalOptions) sdk(extra ...smolvm.Option) []smolvm.Option {
	opts := []smolvm.Option{
		smolvm.WithHome(g.home),
		smolvm.WithAgent(g.agent),
		smolvm.WithNetwork(g.network),
	}
	if g.alpineSource != "" {
		opts = append(opts, smolvm.WithAlpineSource(g.alpineSource))
	}
	if g.logger != nil {
		opts = append(opts, smolvm.WithLogger(g.logger))
	}
	if g.progress != nil {
		opts = append(opts, smolvm.WithProgress(g.progress))
	}
	if k := keeperPath(agentPath()); k != "" {
		opts = append(opts, smolvm.WithKeeper(k))
	}
	if g.startSecrets != nil {
		opts = append(opts, smolvm.WithStartSecrets(g.startSecrets))
	}
	return append(opts, extra...)
}

// vms is where the commands' VMs live: a server with --host, else this
// machine.
func (g *globalOptions) vms() vmHost {
	if g.remote != nil {
		return remoteHost{g}
	}
	return localHost{g}
}

// output writes v as JSON in --json mode, else calls text.
func (g *globalOptions) output(w io.Writer, v any, text func(io.Writer) error) error {
	if g.json {
		return writeJSON(w, v)
	}
	return text(w)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRootCmd(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:           "smolvm",
		Short:         "Create and run SSH-ready Linux microVMs",
		Long:          "smolvm creates, runs and manages QEMU microVMs that are ready for commands over SSH in seconds.",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setup(cmd)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.home, "home", smolvm.DefaultHome(), "state directory (env SMOLVM_HOME)")
	pf.StringVar(&g.alpineSource, "alpine-source", os.Getenv("SMOLVM_ALPINE_SOURCE"), "Alpine minirootfs for the default image: a file, its directory, or a mirror URL (env SMOLVM_ALPINE_SOURCE)")
	pf.StringVar(&g.network, "network", smolvm.NetworkAuto, "network mode: auto (TAP as root, else user), tap or user")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "debug logs on stderr")
	pf.BoolVar(&g.json, "json", false, "machine-readable JSON on stdout, errors included")
	pf.StringVar(&g.host, "host", os.Getenv(api.HostEnv), "talk to a smolvm server instead of working locally: unix:///path/smolvm.sock or tcp://HOST:PORT (env "+api.HostEnv+")")
	pf.StringVar(&g.token, "token", "", "bearer token of a TCP server (env "+api.TokenEnv+"; default for a server on this machine: its token file in --home)")
	root.RegisterFlagCompletionFunc("network", cobra.FixedCompletions(
		[]string{smolvm.NetworkAuto, smolvm.NetworkTAP, smolvm.NetworkUser}, cobra.ShellCompDirectiveNoFileComp))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(
		newRunCmd(g),
		newCreateCmd(g),
		newStartCmd(g),
		newStopCmd(g),
		newPauseCmd(g),
		newResumeCmd(g),
		newDeleteCmd(g),
		newListCmd(g),
		newInfoCmd(g),
		newExecCmd(g),
		newPsCmd(g),
		newKillCmd(g),
		newAttachCmd(g),
		newWaitCmd(g),
		newSSHCmd(g),
		newLogsCmd(g),
		newEnvCmd(g),
		newPolicyCmd(g),
		newDoctorCmd(g),
		newCpCmd(g),
		newFSCmd(g),
		newPortCmd(g),
		newImageCmd(g),
		newSnapshotCmd(g),
		newForkCmd(g),
		newServeCmd(g),
		newMCPCmd(g),
		newUpdateCmd(g),
		newLimitsCmd(g),
		newStatsCmd(g),
		newKeeperCmd(g),
		newTTLCmd(g),
	)
	return root
}

// setup checks the global flags and makes the logger.
func (g *globalOptions) setup(cmd *cobra.Command) error {
	stderr := cmd.ErrOrStderr()
	switch g.network {
	case smolvm.NetworkAuto, smolvm.NetworkTAP, smolvm.NetworkUser:
	default:
		return usageError{fmt.Errorf("--network %q: use auto, tap or user", g.network)}
	}
	g.ran = true
	if g.host != "" && !servesItself(cmd) {
		// The server has its own agent, images and state.
		if err := g.connect(); err != nil {
			return err
		}
	} else if err := g.resolveAgent(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	g.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if g.verbose || isTerminal(stderr) {
		g.progress = stderr
	}
	return nil
}

// servesItself reports whether cmd is a server of this machine's smolvm
// (serve, mcp), which SMOLVM_HOST, meant for its clients, does not redirect.
func servesItself(cmd *cobra.Command) bool {
	for c := cmd; c != nil && c.HasParent(); c = c.Parent() {
		if c.Parent() == c.Root() {
			return c.Name() == "serve" || c.Name() == "mcp"
		}
	}
	return false
}

// execute runs the command line args and returns the exit status.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globalOptions{agent: agentPath()}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	if !g.ran {
		err = usageError{err}
		// Cobra may fail before it parses flags (an unknown command).
		g.json = g.json || jsonFlag(args)
	}
	kind, code := errorKind(err), exitStatus(err)
	msg := err.Error()
	if ctx.Err() != nil {
		// Interrupted: whatever the error says, the user stopped it.
		kind, code = "error", 130
		if errors.Is(err, context.Canceled) {
			msg = "interrupted: " + msg
		} else {
			msg = "interrupted" // err is a consequence, maybe a misleading one
		}
	}
	if g.json {
		writeJSON(stdout, jsonError{Error: msg, Kind: kind})
		return code
	}
	fmt.Fprintln(stderr, "smolvm: "+terminalSafe(msg))
	if errors.As(err, new(usageError)) && cmd != nil {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// jsonFlag reports whether args ask for --json, for errors cobra returns
// before parsing flags.
func jsonFlag(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" {
			return true
		}
		if v, ok := strings.CutPrefix(a, "--json="); ok {
			b, err := strconv.ParseBool(v)
			return err == nil && b
		}
	}
	return false
}

// resolveAgent picks the guest agent: $SMOLVM_AGENT, else the agent
// embedded in this binary (extracted once into the state directory), else
// this executable itself, which doubles as the agent.
func (g *globalOptions) resolveAgent() error {
	if a := os.Getenv("SMOLVM_AGENT"); a != "" {
		g.agent = a
		return nil
	}
	p, err := agentbin.Extract(filepath.Join(g.home, "agent"))
	if err != nil {
		return err
	}
	if p != "" {
		g.agent = p
	}
	return nil
}

// agentPath is this executable, which doubles as the guest agent.
func agentPath() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return exe
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// jsonError is how errors look on stdout in --json mode.
type jsonError struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

// errorKind names the class of err for --json output.
func errorKind(err error) string {
	switch {
	case errors.Is(err, smolvm.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, smolvm.ErrInvalid):
		return "invalid"
	case errors.Is(err, smolvm.ErrNotFound):
		return "not_found"
	case errors.Is(err, smolvm.ErrAlreadyExists):
		return "already_exists"
	case errors.Is(err, smolvm.ErrNotRunning):
		return "not_running"
	case errors.Is(err, smolvm.ErrInUse):
		return "in_use"
	case errors.Is(err, smolvm.ErrProcessExited):
		return "process_exited"
	case errors.Is(err, apiclient.ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, apiclient.ErrUnreachable):
		return "unreachable"
	// A guest file operation's errno, as the API's codes have it.
	case errors.Is(err, fs.ErrNotExist):
		return "not_found"
	case errors.Is(err, fs.ErrExist):
		return "already_exists"
	case errors.Is(err, fs.ErrPermission):
		return "permission_denied"
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR), errors.Is(err, smolvm.ErrTooLarge):
		return "invalid"
	}
	return "error"
}

// exitStatus is the exit code for a failed command: 124 for a timeout
// (as timeout(1) does), else 1.
func exitStatus(err error) int {
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	if errorKind(err) == "timeout" {
		return 124
	}
	return 1
}

// exitCodeError passes a command's exit code through as smolvm's own; it
// prints nothing.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitCode is nil for 0, else an exitCodeError.
func exitCode(code int) error {
	if code == 0 {
		return nil
	}
	if code < 0 || code > 255 {
		code = 255
	}
	return exitCodeError{code}
}

// usageError is a bad command line; it matches smolvm.ErrInvalid.
type usageError struct{ err error }

func (e usageError) Error() string        { return e.err.Error() }
func (e usageError) Unwrap() error        { return e.err }
func (e usageError) Is(target error) bool { return target == smolvm.ErrInvalid }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// completing is where completions look: cobra runs no PersistentPreRunE
// for them, so the server (--host, SMOLVM_HOST) is connected here.
func (g *globalOptions) completing() (vmHost, bool) {
	if g.remote == nil && g.host != "" && g.connect() != nil {
		return nil, false
	}
	return g.vms(), true
}

// completeIDs completes VM ids; max limits how many ids a command takes
// (0 = any number).
func completeIDs(g *globalOptions, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		h, ok := g.completing()
		if !ok {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		vms, err := h.List(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ids []cobra.Completion
		for _, vm := range vms {
			ids = append(ids, cobra.CompletionWithDesc(vm.ID, string(vm.State)))
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
