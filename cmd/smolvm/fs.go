package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/apiclient"
)

// guestFiles is a VM's file system as the fs commands use it: the SDK's
// smolvm.FS locally, the file routes through a server.
type guestFiles interface {
	Cat(ctx context.Context, p string, w io.Writer) error
	Write(ctx context.Context, p string, r io.Reader, perm fs.FileMode) error
	Stat(ctx context.Context, p string) (smolvm.FileInfo, error)
	ReadDir(ctx context.Context, p string) ([]smolvm.FileInfo, error)
	Mkdir(ctx context.Context, p string, perm fs.FileMode, parents bool) error
	Remove(ctx context.Context, p string, recursive bool) error
	Rename(ctx context.Context, from, to string) error
	Watch(ctx context.Context, p string, o smolvm.WatchOptions, fn func(smolvm.WatchEvent)) error
}

func (v localVM) Files() guestFiles { return localFiles{v.VM} }

type localFiles struct{ vm *smolvm.VM }

func (f localFiles) Cat(ctx context.Context, p string, w io.Writer) error {
	if err := notDir(ctx, f, p); err != nil {
		return err
	}
	_, err := f.vm.ReadFile(ctx, p, w)
	return err
}

// notDir fails for a directory, the same way locally and through a
// server (whose download of a directory is a tar).
func notDir(ctx context.Context, f guestFiles, p string) error {
	fi, err := f.Stat(ctx, p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%w (list it with `smolvm fs ls`, copy it with `smolvm cp`)", &fs.PathError{Op: "cat", Path: p, Err: syscall.EISDIR})
	}
	return nil
}

func (f localFiles) Write(ctx context.Context, p string, r io.Reader, perm fs.FileMode) error {
	_, err := f.vm.WriteFile(ctx, p, r, perm)
	return err
}

func (f localFiles) Stat(ctx context.Context, p string) (smolvm.FileInfo, error) {
	return f.vm.FS().Stat(ctx, p)
}

func (f localFiles) ReadDir(ctx context.Context, p string) ([]smolvm.FileInfo, error) {
	return f.vm.FS().ReadDir(ctx, p)
}

func (f localFiles) Mkdir(ctx context.Context, p string, perm fs.FileMode, parents bool) error {
	if parents {
		return f.vm.FS().MkdirAll(ctx, p, perm)
	}
	return f.vm.FS().Mkdir(ctx, p, perm)
}

func (f localFiles) Remove(ctx context.Context, p string, recursive bool) error {
	if recursive {
		return f.vm.FS().RemoveAll(ctx, p)
	}
	return f.vm.FS().Remove(ctx, p)
}

func (f localFiles) Rename(ctx context.Context, from, to string) error {
	return f.vm.FS().Rename(ctx, from, to)
}

func (f localFiles) Watch(ctx context.Context, p string, o smolvm.WatchOptions, fn func(smolvm.WatchEvent)) error {
	return f.vm.FS().Watch(ctx, p, o, fn)
}

func (v *remoteVM) Files() guestFiles { return remoteFiles{v.c, v.info.ID} }

type remoteFiles struct {
	c  *apiclient.Client
	id string
}

func (f remoteFiles) Cat(ctx context.Context, p string, w io.Writer) error {
	if err := notDir(ctx, f, p); err != nil {
		return err
	}
	r, err := f.c.ReadFile(ctx, f.id, p)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.IsTar {
		return &fs.PathError{Op: "cat", Path: p, Err: syscall.EISDIR} // made a directory since
	}
	_, err = io.Copy(w, r)
	return err
}

func (f remoteFiles) Write(ctx context.Context, p string, r io.Reader, perm fs.FileMode) error {
	return f.c.WriteFile(ctx, f.id, p, r, perm)
}

func (f remoteFiles) Stat(ctx context.Context, p string) (smolvm.FileInfo, error) {
	return f.c.Stat(ctx, f.id, p)
}

func (f remoteFiles) ReadDir(ctx context.Context, p string) ([]smolvm.FileInfo, error) {
	return f.c.ReadDir(ctx, f.id, p)
}

func (f remoteFiles) Mkdir(ctx context.Context, p string, perm fs.FileMode, parents bool) error {
	return f.c.Mkdir(ctx, f.id, p, perm, parents)
}

func (f remoteFiles) Remove(ctx context.Context, p string, recursive bool) error {
	return f.c.Remove(ctx, f.id, p, recursive)
}

func (f remoteFiles) Rename(ctx context.Context, from, to string) error {
	return f.c.Rename(ctx, f.id, from, to)
}

func (f remoteFiles) Watch(ctx context.Context, p string, o smolvm.WatchOptions, fn func(smolvm.WatchEvent)) error {
	// The server answers once the guest watches.
	return f.c.Watch(ctx, f.id, p, o.Recursive, o.Ready, fn)
}

func newFSCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fs",
		Short: "Work with files in a VM: ls, cat, write, mkdir, rm, mv, stat, watch",
		Long: "Small file operations in a running VM, without a shell: paths are absolute\n" +
			"guest paths. Errors say what the guest's kernel said (no such file, is a\n" +
			"directory, not empty, permission denied). For trees use `smolvm cp`.",
	}
	cmd.AddCommand(newFSLsCmd(g), newFSCatCmd(g), newFSWriteCmd(g), newFSMkdirCmd(g), newFSRmCmd(g), newFSMvCmd(g), newFSStatCmd(g), newFSWatchCmd(g))
	return cmd
}

// withFiles runs fn on the VM id's files.
func withFiles(ctx context.Context, g *globalOptions, id string, fn func(guestFiles) error) error {
	return withVM(ctx, g, id, func(m machine) error { return fn(m.Files()) })
}

func done(g *globalOptions, cmd *cobra.Command, v any, text string) error {
	return g.output(cmd.OutOrStdout(), v, func(w io.Writer) error {
		if text == "" {
			return nil
		}
		_, err := fmt.Fprintln(w, text)
		return err
	})
}

func newFSLsCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use: "ls ID PATH", Short: "List a guest directory (or describe a file)", Args: cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				fi, err := f.Stat(cmd.Context(), args[1])
				if err != nil {
					return err
				}
				ents := []smolvm.FileInfo{fi}
				if fi.IsDir() {
					if ents, err = f.ReadDir(cmd.Context(), args[1]); err != nil {
						return err
					}
				}
				return g.output(cmd.OutOrStdout(), ents, func(w io.Writer) error {
					for _, e := range ents {
						if _, err := fmt.Fprintln(w, lsLine(e)); err != nil {
							return err
						}
					}
					return nil
				})
			})
		},
	}
}

// lsLine is ls -l's line for e, the guest's name quoted if it is not
// printable (a guest can name files with terminal escapes).
func lsLine(e smolvm.FileInfo) string {
	name := printable(e.Name)
	if e.Target != "" {
		name += " -> " + printable(e.Target)
	}
	return fmt.Sprintf("%s %10d %s %s", lsMode(e), e.Size, e.ModTime.Local().Format("2006-01-02 15:04"), name)
}

// lsMode is ls -l's mode column ("lrwxrwxrwx", not Go's "Lrwxrwxrwx").
func lsMode(e smolvm.FileInfo) string {
	kind := map[string]string{"dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "device": "b", "chardev": "c"}[e.Type]
	if kind == "" {
		kind = "-"
	}
	return kind + e.Perm.Perm().String()[1:]
}

func printable(s string) string {
	for _, r := range s {
		// C1 controls (U+009B is a CSI on some terminals) and format
		// characters such as U+202E (right-to-left override) count too.
		if r != ' ' && !unicode.IsPrint(r) || r == utf8.RuneError {
			return strconv.Quote(s)
		}
	}
	return s
}

func newFSStatCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use: "stat ID PATH", Short: "Describe a guest path (not following a final symlink)", Args: cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				fi, err := f.Stat(cmd.Context(), args[1])
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), fi, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "name:  %s\ntype:  %s\nsize:  %d\nmode:  %04o (%s)\nmtime: %s\n", printable(fi.Name), fi.Type, fi.Size, fi.Perm, lsMode(fi), fi.ModTime.Local().Format(time.RFC3339Nano))
					if err == nil && fi.Target != "" {
						_, err = fmt.Fprintf(w, "target: %s\n", printable(fi.Target))
					}
					return err
				})
			})
		},
	}
}

func newFSCatCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use: "cat ID PATH", Short: "Print a guest file (--json: as {path, content} or content_b64)", Args: cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				if !g.json {
					return f.Cat(cmd.Context(), args[1], cmd.OutOrStdout())
				}
				// Held whole for JSON: capped as the SDK's ReadFile.
				var buf capped
				buf.max = smolvm.DefaultMaxReadFile
				if err := f.Cat(cmd.Context(), args[1], &buf); err != nil {
					if buf.over {
						return fmt.Errorf("%s: %w: over %d bytes; print it without --json", args[1], smolvm.ErrTooLarge, buf.max)
					}
					return err
				}
				out := map[string]any{"path": args[1]}
				if utf8.Valid(buf.b) {
					out["content"] = string(buf.b)
				} else {
					out["content_b64"] = buf.b
				}
				return writeJSON(cmd.OutOrStdout(), out)
			})
		},
	}
}

type capped struct {
	b    []byte
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if len(c.b)+len(p) > c.max {
		c.over = true
		return 0, smolvm.ErrTooLarge
	}
	c.b = append(c.b, p...)
	return len(p), nil
}

func parsePerm(s string) (fs.FileMode, error) {
	if s == "" {
		return 0, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, usagef("--mode %q: want octal permission bits, such as 0644", s)
	}
	return fs.FileMode(m), nil
}

func newFSWriteCmd(g *globalOptions) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use: "write ID PATH", Short: "Write standard input to a guest file, atomically (missing parents are made)",
		Example: "  echo hello | smolvm fs write web /root/hello.txt --mode 0600",
		Args:    cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			perm, err := parsePerm(mode)
			if err != nil {
				return err
			}
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				cr := &countReader{r: cmd.InOrStdin()}
				if err := f.Write(cmd.Context(), args[1], cr, perm); err != nil {
					return err
				}
				return done(g, cmd, map[string]any{"path": args[1], "bytes": cr.n}, "")
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "permission bits, octal (default 0644)")
	return cmd
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func newFSMkdirCmd(g *globalOptions) *cobra.Command {
	var parents bool
	var mode string
	cmd := &cobra.Command{
		Use: "mkdir ID PATH", Short: "Make a guest directory", Args: cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			perm, err := parsePerm(mode)
			if err != nil {
				return err
			}
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				if err := f.Mkdir(cmd.Context(), args[1], perm, parents); err != nil {
					return err
				}
				return done(g, cmd, map[string]string{"path": args[1]}, "")
			})
		},
	}
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "make missing parents too; an existing directory is fine")
	cmd.Flags().StringVar(&mode, "mode", "", "permission bits, octal (default 0755)")
	return cmd
}

func newFSRmCmd(g *globalOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use: "rm ID PATH", Short: "Remove a guest file, symlink or empty directory (-r: a tree)", Args: cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				if err := f.Remove(cmd.Context(), args[1], recursive); err != nil {
					return err
				}
				return done(g, cmd, map[string]string{"path": args[1]}, "")
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove a directory and everything beneath it (like rm -rf: a missing path is no error)")
	return cmd
}

func newFSMvCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use: "mv ID FROM TO", Short: "Rename a guest path (rename(2): within one file system)", Args: cobra.ExactArgs(3), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFiles(cmd.Context(), g, args[0], func(f guestFiles) error {
				if err := f.Rename(cmd.Context(), args[1], args[2]); err != nil {
					return err
				}
				return done(g, cmd, map[string]string{"from": args[1], "to": args[2]}, "")
			})
		},
	}
}

func newFSWatchCmd(g *globalOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "watch ID PATH",
		Short: "Print the changes in a guest directory as they happen, until interrupted",
		Long: "Print one line per change in the guest directory PATH (created, modified,\n" +
			"removed, renamed), paths relative to it, until Ctrl-C or until PATH is\n" +
			"removed; with --json one JSON object a line. \"watching\" goes to stderr once\n" +
			"the guest watches. An overflow line means events were lost: rescan.",
		Example: "  smolvm fs watch web /srv --recursive\n  smolvm --json fs watch web /tmp | jq .",
		Args:    cobra.ExactArgs(2), SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return withFiles(ctx, g, args[0], func(f guestFiles) error {
				out := cmd.OutOrStdout()
				var werr error
				err := f.Watch(ctx, args[1], smolvm.WatchOptions{Recursive: recursive, Ready: func() {
					fmt.Fprintf(cmd.ErrOrStderr(), "watching %s:%s\n", args[0], args[1])
				}}, func(e smolvm.WatchEvent) {
					if werr != nil {
						return
					}
					if g.json {
						werr = writeJSONLine(out, e)
					} else {
						_, werr = fmt.Fprintln(out, watchLine(e))
					}
				})
				if werr != nil {
					return werr
				}
				if errors.Is(err, context.Canceled) && ctx.Err() != nil {
					return nil // interrupted: the normal end
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "watch subdirectories too, also new ones")
	return cmd
}

func watchLine(e smolvm.WatchEvent) string {
	p := printable(e.Path)
	if e.Dir && p != "." {
		p += "/"
	}
	switch e.Op {
	case smolvm.WatchRename:
		old := printable(e.OldPath)
		if e.Dir {
			old += "/"
		}
		return "rename " + old + " -> " + p
	case smolvm.WatchOverflow:
		return "overflow " + strings.TrimSpace(printable(e.Message))
	}
	return string(e.Op) + " " + p
}

// writeJSONLine writes v as one line of JSON (NDJSON), flushed by the
// caller's writer as it goes.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
