package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// processes is what the process commands need of a VM, local or remote.
type processes interface {
	// ExecArgv runs argv without a shell, streaming (smolvm.VM.ExecArgv).
	ExecArgv(ctx context.Context, argv []string, o smolvm.ExecOptions) (int, error)
	startProc(ctx context.Context, spec smolvm.ProcessSpec) (smolvm.ProcessInfo, error)
	procs(ctx context.Context) ([]smolvm.ProcessInfo, error)
	signalProc(ctx context.Context, pid, sig string) (smolvm.ProcessInfo, error)
	waitProc(ctx context.Context, pid string) (smolvm.ProcessInfo, error)
	attachProc(ctx context.Context, pid string, stdout, stderr io.Writer, o smolvm.AttachOptions) (smolvm.ProcessInfo, error)
}

func (v localVM) startProc(ctx context.Context, spec smolvm.ProcessSpec) (smolvm.ProcessInfo, error) {
	p, err := v.StartProcess(ctx, spec)
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	return v.procInfo(p.Info(ctx))
}

func (v localVM) procInfo(in *smolvm.ProcessInfo, err error) (smolvm.ProcessInfo, error) {
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	return *in, nil
}

func (v localVM) procs(ctx context.Context) ([]smolvm.ProcessInfo, error) { return v.Processes(ctx) }

func (v localVM) signalProc(ctx context.Context, pid, sig string) (smolvm.ProcessInfo, error) {
	p, err := v.Process(ctx, pid)
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	if err := p.Signal(ctx, sig); err != nil {
		return smolvm.ProcessInfo{}, err
	}
	return v.procInfo(p.Info(ctx))
}

func (v localVM) waitProc(ctx context.Context, pid string) (smolvm.ProcessInfo, error) {
	p, err := v.Process(ctx, pid)
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	if _, err := p.Wait(ctx); err != nil {
		return smolvm.ProcessInfo{}, err
	}
	return v.procInfo(p.Info(ctx))
}

func (v localVM) attachProc(ctx context.Context, pid string, stdout, stderr io.Writer, o smolvm.AttachOptions) (smolvm.ProcessInfo, error) {
	p, err := v.Process(ctx, pid)
	if err != nil {
		return smolvm.ProcessInfo{}, err
	}
	return v.procInfo(p.Attach(ctx, stdout, stderr, o))
}

func (v *remoteVM) ExecArgv(ctx context.Context, argv []string, o smolvm.ExecOptions) (int, error) {
	return v.exec(ctx, api.Exec{Argv: argv}, o, shellJoin(argv))
}

func (v *remoteVM) startProc(ctx context.Context, spec smolvm.ProcessSpec) (smolvm.ProcessInfo, error) {
	return v.c.StartProcess(ctx, v.info.ID, api.StartProcess{
		Argv: spec.Args, Cmd: spec.Shell, Dir: spec.Dir, User: spec.User, Env: spec.Env, Stdin: spec.StdinPipe,
	})
}

func (v *remoteVM) procs(ctx context.Context) ([]smolvm.ProcessInfo, error) {
	return v.c.Processes(ctx, v.info.ID)
}

func (v *remoteVM) signalProc(ctx context.Context, pid, sig string) (smolvm.ProcessInfo, error) {
	return v.c.SignalProcess(ctx, v.info.ID, pid, sig)
}

func (v *remoteVM) waitProc(ctx context.Context, pid string) (smolvm.ProcessInfo, error) {
	return v.c.WaitProcess(ctx, v.info.ID, pid)
}

func (v *remoteVM) attachProc(ctx context.Context, pid string, stdout, stderr io.Writer, o smolvm.AttachOptions) (smolvm.ProcessInfo, error) {
	return v.c.AttachProcess(ctx, v.info.ID, pid, stdout, stderr, o)
}

// procFlags are exec's flags for argv commands and background processes.
type procFlags struct {
	detach    bool
	argv      bool
	cwd, user string
}

func (f *procFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.BoolVarP(&f.detach, "detach", "d", false, "start the command in the background in the VM and print its process id (see ps, attach, kill, wait)")
	fs.BoolVar(&f.argv, "argv", false, "run the words after -- as a program and its arguments, without the guest's shell")
	fs.StringVar(&f.cwd, "cwd", "", "working directory in the guest (default: the user's home)")
	fs.StringVarP(&f.user, "user", "u", "", "guest user to run as, a name or a numeric uid (default root)")
}

// runExecProc is exec with --argv or --detach.
func runExecProc(ctx context.Context, g *globalOptions, o execOptions, id string, words []string, s streams) error {
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	secrets, err := o.secrets.parse()
	if err != nil {
		return err
	}
	if o.detach {
		if o.stdin {
			return usagef("--detach with -i: a background process's stdin is not this terminal; leave -i out")
		}
		if o.timeout != 0 {
			return usagef("--detach with --timeout: a background process runs until it exits or is killed (smolvm kill)")
		}
		// A background process's env lives only in the agent's memory
		// (ProcessInfo never shows it), so secrets join it there.
		if env == nil && len(secrets) > 0 {
			env = map[string]string{}
		}
		maps.Copy(env, secrets)
		spec := smolvm.ProcessSpec{Dir: o.cwd, User: o.user, Env: env}
		if o.argv {
			spec.Args = words
		} else {
			spec.Shell = shellJoin(words)
		}
		return withVM(ctx, g, id, func(vm machine) error {
			in, err := vm.startProc(ctx, spec)
			if err != nil {
				return err
			}
			return g.output(s.out, in, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, in.ID)
				return err
			})
		})
	}
	var stdout, stderr bytes.Buffer
	eo := smolvm.ExecOptions{Stdout: s.out, Stderr: s.err, Env: env, Timeout: o.timeout, Dir: o.cwd, User: o.user, Secrets: secrets}
	if g.json {
		eo.Stdout, eo.Stderr = &stdout, &stderr
	}
	if o.stdin {
		eo.Stdin = s.in
	}
	var code int
	err = withVM(ctx, g, id, func(vm machine) error {
		var xerr error
		code, xerr = vm.ExecArgv(ctx, words, eo)
		return xerr
	})
	if err != nil {
		return err
	}
	if g.json {
		if err := writeJSON(s.out, newExecResult(id, code, stdout.Bytes(), stderr.Bytes())); err != nil {
			return err
		}
	}
	return exitCode(code)
}

func newPsCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "ps ID",
		Short:             "List a VM's background processes",
		Long:              "List the background processes of a running VM (exec --detach), running and\nrecently exited. Without an ID, ps lists the VMs, as list does." + jsonOutputHelp,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if len(args) == 0 {
				// ps was list's alias before it listed processes.
				l := newListCmd(g)
				l.SetOut(cmd.OutOrStdout())
				l.SetContext(ctx)
				return l.RunE(l, nil)
			}
			return withVM(ctx, g, args[0], func(vm machine) error {
				list, err := vm.procs(ctx)
				if err != nil {
					return err
				}
				if list == nil {
					list = []smolvm.ProcessInfo{}
				}
				return g.output(cmd.OutOrStdout(), list, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tPID\tSTATUS\tSTARTED\tCOMMAND")
					for _, p := range list {
						// Every string here is the guest's: quoted if it holds terminal escapes.
						fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", printable(p.ID), p.PID, printable(procStatus(p)), p.StartedAt.Local().Format(time.DateTime), procCommand(p))
					}
					return tw.Flush()
				})
			})
		},
	}
}

func procStatus(p smolvm.ProcessInfo) string {
	switch {
	case p.Running:
		return "running"
	case p.Exit == nil:
		return "exited"
	case p.Exit.Signal != "":
		return "killed (" + p.Exit.Signal + ")"
	}
	return fmt.Sprintf("exited (%d)", p.Exit.ExitCode)
}

func procCommand(p smolvm.ProcessInfo) string {
	c := p.Shell
	if len(p.Args) > 0 {
		c = shellJoin(p.Args)
	}
	c = printable(strings.ReplaceAll(c, "\n", " "))
	if r := []rune(c); len(r) > 60 {
		c = string(r[:57]) + "..." // whole runes: a cut one would print as U+FFFD
	}
	return c
}

type killOptions struct{ signal string }

func newKillCmd(g *globalOptions) *cobra.Command {
	var o killOptions
	cmd := &cobra.Command{
		Use:               "kill ID PROC",
		Short:             "Send a signal to a background process",
		Long:              "Send a signal (default TERM) to a background process of a VM and its process\ngroup." + jsonOutputHelp,
		Example:           "  smolvm kill web p3\n  smolvm kill web p3 --signal KILL",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return withVM(ctx, g, args[0], func(vm machine) error {
				in, err := vm.signalProc(ctx, args[1], o.signal)
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), in, func(io.Writer) error { return nil })
			})
		},
	}
	cmd.Flags().StringVarP(&o.signal, "signal", "s", "TERM", "signal name (TERM, KILL, INT, HUP, ...) or number")
	return cmd
}

type attachOptions struct {
	noFollow bool
	offset   int64
}

// attachResult is attach's --json output.
type attachResult struct {
	execResult
	Process smolvm.ProcessInfo `json:"process"`
	Dropped int64              `json:"dropped_bytes,omitempty"`
}

func newAttachCmd(g *globalOptions) *cobra.Command {
	var o attachOptions
	cmd := &cobra.Command{
		Use:   "attach ID PROC",
		Short: "Show a background process's output and follow it",
		Long: "Print a background process's recent output (the VM keeps the last MiB of\n" +
			"each), then follow it until the process exits; smolvm exits with its exit\n" +
			"code. Ctrl-C detaches and leaves the process running." + jsonOutputHelp,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAttach(cmd.Context(), g, o, args[0], args[1], cmdStreams(cmd))
		},
	}
	cmd.Flags().BoolVar(&o.noFollow, "no-follow", false, "print the kept output and return, without waiting for the process")
	cmd.Flags().Int64Var(&o.offset, "offset", 0, "start at this byte of the process's whole output (0 = all that is kept)")
	return cmd
}

func runAttach(ctx context.Context, g *globalOptions, o attachOptions, id, pid string, s streams) error {
	var stdout, stderr bytes.Buffer
	out, errw := s.out, s.err
	if g.json {
		out, errw = &stdout, &stderr
	}
	var dropped int64
	ao := smolvm.AttachOptions{Offset: o.offset, Follow: !o.noFollow, Dropped: func(n int64) {
		dropped += n
		if !g.json {
			fmt.Fprintf(s.err, "smolvm: %d bytes of earlier output were dropped (the VM keeps the last %d of each process)\n", n, smolvm.ProcessOutputBuffer)
		}
	}}
	var in smolvm.ProcessInfo
	err := withVM(ctx, g, id, func(vm machine) error {
		var err error
		in, err = vm.attachProc(ctx, pid, out, errw, ao)
		return err
	})
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintf(s.err, "smolvm: detached from %s, which keeps running (smolvm attach %s %s)\n", pid, id, pid)
		return exitCode(130)
	}
	if err != nil {
		return err
	}
	code := 0
	if in.Exit != nil {
		code = in.Exit.ExitCode
	}
	if g.json {
		r := attachResult{execResult: newExecResult(id, code, stdout.Bytes(), stderr.Bytes()), Process: in, Dropped: dropped}
		if err := writeJSON(s.out, r); err != nil {
			return err
		}
	}
	return exitCode(code)
}

func newWaitCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "wait ID PROC",
		Short:             "Wait for a background process to exit",
		Long:              "Wait for a background process to exit; smolvm exits with its exit code\n(128+N for signal N)." + jsonOutputHelp,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var in smolvm.ProcessInfo
			err := withVM(ctx, g, args[0], func(vm machine) error {
				var err error
				in, err = vm.waitProc(ctx, args[1])
				return err
			})
			if err != nil {
				return err
			}
			code := 0
			if in.Exit != nil {
				code = in.Exit.ExitCode
			}
			if err := g.output(cmd.OutOrStdout(), in, func(io.Writer) error { return nil }); err != nil {
				return err
			}
			return exitCode(code)
		},
	}
}
