package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
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
			return withVM(cmd.Context(), g, args[0], func(vm *smolvm.VM) error {
				return runLogs(cmd.Context(), g, o, vm, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "follow the log until Ctrl-C or the VM stops")
	return cmd
}

func runLogs(ctx context.Context, g *globalOptions, o logsOptions, vm *smolvm.VM, w io.Writer) error {
	files, err := vm.ConsoleLogs(ctx)
	if err != nil {
		return err
	}
	if !o.follow && g.json {
		// Bounded: the log files hold at most 2*ConsoleLogMax bytes.
		var log strings.Builder
		if err := copyFiles(&log, files); err != nil {
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
	if !o.follow {
		return copyFiles(w, files)
	}
	current := vm.Info().ConsoleLog
	if err := copyFiles(w, slices.DeleteFunc(files, func(f string) bool { return f == current })); err != nil {
		return err
	}
	return follow(ctx, vm, current, w, 200*time.Millisecond)
}

// copyFiles streams the files to w, one after the other.
func copyFiles(w io.Writer, files []string) error {
	for _, name := range files {
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // rotated away meanwhile
		}
		if err != nil {
			return err
		}
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// follow copies the file at path to w as it grows, moving on to the new
// file when it is rotated or the VM restarts (which starts a new log),
// until ctx ends or the VM is not running. Each round first has smolvm
// move the guest's latest output into the file.
func follow(ctx context.Context, vm *smolvm.VM, path string, w io.Writer, every time.Duration) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		if _, err := vm.ConsoleLogs(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, smolvm.ErrNotFound) {
				return nil
			}
			return err
		}
		if fi, err := os.Stat(path); err == nil {
			if f != nil {
				if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
					io.Copy(w, f) // the rest of the old log
					f.Close()
					f = nil
				}
			}
			if f == nil {
				if f, err = os.Open(path); err != nil {
					return err
				}
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
		}
		if i%5 == 0 {
			if err := vm.Refresh(ctx); err != nil {
				if ctx.Err() != nil || errors.Is(err, smolvm.ErrNotFound) {
					return nil
				}
				return err
			}
			if vm.Status() != smolvm.StateRunning {
				if f != nil {
					_, err := io.Copy(w, f)
					return err
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
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
