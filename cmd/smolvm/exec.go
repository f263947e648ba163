package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/smolvm/smolvm"
)

type execOptions struct {
	timeout time.Duration
	stdin   bool
	env     []string
	procFlags
	secrets secretFlags
}

func newExecCmd(g *globalOptions) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec ID [flags] -- CMD [ARGS...]",
		Short: "Run a command in a running VM",
		Long: "Run a command in a running VM, streaming its output; smolvm exits with the\n" +
			"command's exit code (124 on --timeout). Arguments are quoted as for run and\n" +
			"the guest's shell runs them; with --argv they are a program and its arguments,\n" +
			"run without a shell. --detach starts it in the background and prints its\n" +
			"process id (ps, attach, kill, wait)." + jsonOutputHelp,
		Example: "  smolvm exec web -- ls -la /\n  smolvm exec -i web -- sh -c 'cat > /tmp/f' < file\n" +
			"  smolvm exec --argv --cwd /tmp --user nobody web -- printf '%s\\n' 'a b' '$(id)'\n" +
			"  smolvm exec --detach web -- python3 -m http.server 8000",
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		Args:              minArgs(2, "need a VM id and a command: smolvm exec ID -- CMD [ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.detach || o.argv {
				return runExecProc(cmd.Context(), g, o, args[0], args[1:], cmdStreams(cmd))
			}
			return runExec(cmd.Context(), g, o, args[0], shellJoin(args[1:]), cmdStreams(cmd))
		},
	}
	fs := cmd.Flags()
	o.procFlags.register(cmd)
	fs.Var(secondsFlag(&o.timeout), "timeout", timeoutHelp)
	fs.BoolVarP(&o.stdin, "interactive", "i", false, "pass standard input to the command")
	fs.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable for this command, NAME=VALUE (repeatable)")
	o.secrets.register(cmd, "for this command")
	return cmd
}

func runExec(ctx context.Context, g *globalOptions, o execOptions, id, command string, s streams) error {
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	var stdout, stderr bytes.Buffer
	secrets, err := o.secrets.parse()
	if err != nil {
		return err
	}
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
		code, xerr = vm.Exec(ctx, command, eo)
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

type sshOptions struct {
	print bool
}

func newSSHCmd(g *globalOptions) *cobra.Command {
	var o sshOptions
	cmd := &cobra.Command{
		Use:               "ssh ID",
		Aliases:           []string{"shell"},
		Short:             "Open an interactive shell in a running VM",
		Long:              "Open an interactive login shell in a running VM, or with --print show the\nOpenSSH command that reaches it.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.print {
				if err := g.mustLocal("ssh --print", "the OpenSSH command names key files on the server's machine; use `smolvm ssh ID` (without --print) for a shell through the server"); err != nil {
					return err
				}
				return withVM(cmd.Context(), g, args[0], func(vm machine) error {
					return printSSH(g, cmd.OutOrStdout(), vm.Info())
				})
			}
			if g.json {
				return usagef("an interactive shell has no JSON output; use --print for the ssh command")
			}
			return runShell(cmd.Context(), g, args[0], cmdStreams(cmd))
		},
	}
	cmd.Flags().BoolVar(&o.print, "print", false, "print the equivalent OpenSSH command instead")
	return cmd
}

// sshArgv is the OpenSSH command line that logs in to a running VM with
// its key, checking its pinned host key.
func sshArgv(info smolvm.VMInfo) ([]string, error) {
	if info.State != smolvm.StateRunning || info.Network.SSHAddr == "" {
		return nil, fmt.Errorf("vm %q: %w (state %s): start it first", info.ID, smolvm.ErrNotRunning, info.State)
	}
	host, port, err := net.SplitHostPort(info.Network.SSHAddr)
	if err != nil {
		return nil, fmt.Errorf("vm %q: SSH address %q: %w", info.ID, info.Network.SSHAddr, err)
	}
	argv := []string{
		"ssh", "-i", filepath.Join(info.DataDir, "id_ed25519"),
		"-o", "UserKnownHostsFile=" + filepath.Join(info.DataDir, "known_hosts"),
		"-o", "IdentitiesOnly=yes",
	}
	if port != "22" {
		argv = append(argv, "-p", port)
	}
	return append(argv, "root@"+host), nil
}

func printSSH(g *globalOptions, w io.Writer, info smolvm.VMInfo) error {
	argv, err := sshArgv(info)
	if err != nil {
		return err
	}
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	line := strings.Join(quoted, " ")
	return g.output(w, struct {
		Argv    []string `json:"argv"`
		Command string   `json:"command"`
	}{argv, line}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, line)
		return err
	})
}

// runShell runs the guest's login shell on the local terminal, in raw
// mode and following its size, or on plain pipes when stdin is not a
// terminal.
func runShell(ctx context.Context, g *globalOptions, id string, s streams) error {
	termName := os.Getenv("TERM")
	if termName == "" {
		termName = "xterm"
	}
	var code int
	err := withVM(ctx, g, id, func(vm machine) error {
		width, height := 80, 24
		var resize chan [2]int
		if f, ok := s.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fd := int(f.Fd())
			if w, h, err := term.GetSize(fd); err == nil {
				width, height = w, h
			}
			old, err := term.MakeRaw(fd)
			if err != nil {
				return fmt.Errorf("terminal raw mode: %w", err)
			}
			defer term.Restore(fd, old)
			resize = make(chan [2]int)
			stop := forwardResizes(fd, resize)
			defer stop()
		}
		var err error
		code, err = vm.Shell(ctx, s.in, s.out, s.err, termName, width, height, resize)
		return err
	})
	if err != nil {
		return err
	}
	return exitCode(code)
}

// forwardResizes sends the terminal's size on SIGWINCH until stop is
// called.
func forwardResizes(fd int, resize chan<- [2]int) (stop func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-winch:
				w, h, err := term.GetSize(fd)
				if err != nil {
					continue
				}
				select {
				case resize <- [2]int{w, h}:
				case <-done:
					return
				}
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
	}
}
