package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

type logsOptions struct {
	follow bool
}

func newLogsCmd(g *globalOptions) *cobra.Command {
	var o logsOptions
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a VM's console log",
		Long: "Print a VM's serial console log (kernel and init messages). With -f, keep\n" +
			"printing what is added until Ctrl-C or the VM stops; --json then prints one\n" +
			`{"line": ...} object per line.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				return runLogs(cmd.Context(), g, o, vm, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "follow the log until Ctrl-C or the VM stops")
	return cmd
}

func runLogs(ctx context.Context, g *globalOptions, o logsOptions, vm machine, w io.Writer) error {
	if !o.follow && g.json {
		// Bounded: the log files hold at most 2*ConsoleLogMax bytes.
		var log strings.Builder
		if err := vm.Logs(ctx, false, &log); err != nil {
			return err
		}
		return writeJSON(w, struct {
			ID         string `json:"id"`
			ConsoleLog string `json:"console_log"`
			Log        string `json:"log"`
		}{vm.ID(), vm.Info().ConsoleLog, log.String()})
	}
	if g.json {
		lw := &jsonLines{w: w}
		defer lw.flush()
		w = lw
	}
	return vm.Logs(ctx, o.follow, w)
}

// jsonLines writes each complete line written to it as {"line": ...}.
type jsonLines struct {
	w   io.Writer
	buf []byte
}

func (j *jsonLines) Write(p []byte) (int, error) {
	j.buf = append(j.buf, p...)
	for {
		i := bytes.IndexByte(j.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(bytes.TrimSuffix(j.buf[:i], []byte("\r")))
		j.buf = j.buf[i+1:]
		if err := writeLine(j.w, line); err != nil {
			return len(p), err
		}
	}
}

func (j *jsonLines) flush() {
	if len(j.buf) > 0 {
		writeLine(j.w, string(j.buf))
		j.buf = nil
	}
}

func writeLine(w io.Writer, line string) error {
	b, err := json.Marshal(struct {
		Line string `json:"line"`
	}{line})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
