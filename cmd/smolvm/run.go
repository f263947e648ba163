package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// streams are a command's standard input and outputs.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

func cmdStreams(cmd *cobra.Command) streams {
	return streams{in: cmd.InOrStdin(), out: cmd.OutOrStdout(), err: cmd.ErrOrStderr()}
}

const timeoutHelp = "kill the command after this long, exit code 124: seconds, or a duration such as 1.5s or 2m (0 = no limit)"

// execResult is the --json output of run and exec. JSON strings hold
// only text, so output that is not valid UTF-8 comes base64-encoded in
// stdout_b64 or stderr_b64 instead of stdout or stderr, byte for byte.
type execResult struct {
	ID        string  `json:"id"`
	ExitCode  int     `json:"exit_code"`
	Stdout    *string `json:"stdout,omitempty"`
	Stderr    *string `json:"stderr,omitempty"`
	StdoutB64 string  `json:"stdout_b64,omitempty"`
	StderrB64 string  `json:"stderr_b64,omitempty"`
}

const jsonOutputHelp = "\n\nWith --json, stdout and stderr are printed as JSON strings when they are\n" +
	"valid UTF-8; other output comes base64-encoded, exactly as the command\n" +
	"wrote it, in stdout_b64 or stderr_b64 instead."

func newExecResult(id string, code int, stdout, stderr []byte) execResult {
	r := execResult{ID: id, ExitCode: code}
	r.Stdout, r.StdoutB64 = encodeOutput(stdout)
	r.Stderr, r.StderrB64 = encodeOutput(stderr)
	return r
}

// encodeOutput returns b as text when it is valid UTF-8, else as base64.
func encodeOutput(b []byte) (text *string, b64 string) {
	if utf8.Valid(b) {
		s := string(b)
		return &s, ""
	}
	return nil, base64.StdEncoding.EncodeToString(b)
}

type runOptions struct {
	vm           vmFlags
	timeout      time.Duration
	stdin        bool
	fromSnapshot string
	secrets      secretFlags
}

func newRunCmd(g *globalOptions) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run a command in a new VM, then delete the VM",
		Long: "Create a VM, start it, run a command in it and delete it again, also on\n" +
			"Ctrl-C. smolvm exits with the command's exit code (124 on --timeout).\n\n" +
			"Several arguments are quoted for the guest's shell one by one; a single\n" +
			"argument is a shell command line as it is." + jsonOutputHelp,
		Example: "  smolvm run -- uname -a\n" +
			"  smolvm run -- sh -c 'echo $HOME'\n" +
			"  smolvm run -- 'cat /etc/os-release | head -1'\n" +
			"  smolvm --json run --memory 1024 -- python3 -V\n" +
			"  smolvm run --from-snapshot warm -- ./test.sh",
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("no command given: smolvm run [flags] -- CMD [ARGS...]")
			}
			if o.fromSnapshot != "" {
				if err := checkFromSnapshot(cmd, "timeout", "interactive"); err != nil {
					return err
				}
			}
			return runEphemeral(cmd.Context(), g, o, shellJoin(args), cmdStreams(cmd))
		},
	}
	// Flags end at the command: `smolvm run ls -la` runs `ls -la`.
	cmd.Flags().SetInterspersed(false)
	o.vm.register(cmd)
	cmd.Flags().Var(secondsFlag(&o.timeout), "timeout", timeoutHelp)
	cmd.Flags().BoolVarP(&o.stdin, "interactive", "i", false, "pass standard input to the command")
	cmd.Flags().StringVar(&o.fromSnapshot, "from-snapshot", "", "make the VM from a snapshot (smolvm snapshot list) instead of booting one")
	cmd.RegisterFlagCompletionFunc("from-snapshot", completeSnapshots(g, 0))
	o.secrets.register(cmd, "for the command")
	return cmd
}

// runEphemeral runs command in a VM of its own, deleted before it returns.
func runEphemeral(ctx context.Context, g *globalOptions, o runOptions, command string, s streams) error {
	var stdout, stderr bytes.Buffer
	secrets, err := o.secrets.parse()
	if err != nil {
		return err
	}
	eo := smolvm.ExecOptions{Stdout: s.out, Stderr: s.err, Timeout: o.timeout, Secrets: secrets}
	if g.json {
		eo.Stdout, eo.Stderr = &stdout, &stderr
	}
	if o.stdin {
		eo.Stdin = s.in
	}
	var (
		vm   machine
		code int
	)
	if o.fromSnapshot != "" {
		// FromSnapshot deletes a VM it could not start itself.
		if vm, err = fromSnapshot(ctx, g, o.fromSnapshot, o.vm); err != nil {
			return err
		}
		code, err = vm.Exec(ctx, command, eo)
	} else {
		cfg, cerr := o.vm.config()
		if cerr != nil {
			return cerr
		}
		if vm, err = g.vms().Create(ctx, cfg, o.vm.cold); err != nil {
			return err
		}
		code, err = startAndExec(ctx, vm, command, eo)
	}
	// Delete also after Ctrl-C: the cleanup must outlive ctx.
	err = errors.Join(err, vm.Delete(context.WithoutCancel(ctx)))
	if err != nil {
		return err
	}
	if g.json {
		if err := writeJSON(s.out, newExecResult(vm.ID(), code, stdout.Bytes(), stderr.Bytes())); err != nil {
			return err
		}
	}
	return exitCode(code)
}

func startAndExec(ctx context.Context, vm machine, command string, eo smolvm.ExecOptions) (int, error) {
	if err := vm.Start(ctx); err != nil {
		return -1, err
	}
	return vm.Exec(ctx, command, eo)
}
