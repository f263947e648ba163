package main

import (
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm/internal/mcpserver"
)

type mcpOptions struct {
	allVMs bool
}

func newMCPCmd(g *globalOptions) *cobra.Command {
	var o mcpOptions
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve sandboxes to AI agents over the Model Context Protocol (stdio)",
		Long: `mcp serves the Model Context Protocol on stdin and stdout, for an AI agent's
MCP client to start as a subprocess. Its tools create sandboxes (microVMs),
run commands in them, write and read files, list, snapshot, fork and delete
them. Logs go to stderr.

Sandboxes the session makes are deleted when it ends (stdin closed, SIGTERM)
unless the agent asked to keep them. The agent sees and acts on only the
sandboxes it made and those earlier MCP sessions kept; --all-vms gives it
every VM and snapshot in the state directory.`,
		Example: `  # in an MCP client's configuration:
  {"mcpServers": {"smolvm": {"command": "smolvm", "args": ["mcp"]}}}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			srv, err := mcpserver.New(ctx, mcpserver.Config{
				Home:    g.home,
				Options: g.sdk(),
				AllVMs:  o.allVMs,
				Logger:  g.logger,
				Version: buildVersion(),
			})
			if err != nil {
				return err
			}
			return srv.ServeIO(ctx, readCloser(cmd.InOrStdin()), writeCloser(cmd.OutOrStdout()))
		},
	}
	cmd.Flags().BoolVar(&o.allVMs, "all-vms", false, "let the agent list, use and delete every VM and snapshot, not only those made through MCP")
	return cmd
}

// readCloser keeps a real file closable, so that ending the session
// unblocks a read of stdin.
func readCloser(r io.Reader) io.ReadCloser {
	if rc, ok := r.(io.ReadCloser); ok {
		return rc
	}
	return io.NopCloser(r)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func writeCloser(w io.Writer) io.WriteCloser {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return nopWriteCloser{w}
}

// buildVersion is the module version this binary was built from.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}
