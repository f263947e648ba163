package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/mcpserver"
	"github.com/smolvm/smolvm/internal/server"
	"github.com/smolvm/smolvm/internal/statedir"
)

type serveOptions struct {
	socket      string
	listen      string
	token       string
	allowRemote bool
	idle        time.Duration
}

func newServeCmd(g *globalOptions) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Serve the HTTP API (docs/api.md) on a UNIX socket or TCP",
		Long: "Serve smolvm's HTTP API, the SDK for every language, until Ctrl-C or SIGTERM (VMs keep\n" +
			"running). By default on the UNIX socket $SMOLVM_HOME/smolvm.sock (mode 0600: only you\n" +
			"connect, no token). With --listen, on TCP instead, where every request needs the bearer\n" +
			"token: --token, else $SMOLVM_TOKEN, else one made and kept in $SMOLVM_HOME/serve.token.\n" +
			"The API document is served at /openapi.json.",
		Example: "  smolvm serve\n" +
			"  curl --unix-socket ~/.local/state/smolvm/smolvm.sock http://smolvm/v1/health\n" +
			"  smolvm serve --listen 127.0.0.1:7070\n" +
			"  smolvm serve --idle-timeout 30s   # exit after 30s without requests or connections",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("socket") && o.listen != "" {
				o.socket = "" // --listen alone: TCP only
			} else if !cmd.Flags().Changed("socket") {
				o.socket = filepath.Join(g.home, api.SocketFile)
			}
			if !cmd.Flags().Changed("token") {
				o.token = os.Getenv(api.TokenEnv)
			}
			return runServe(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "", "UNIX socket to serve (default $SMOLVM_HOME/"+api.SocketFile+"; with --listen, only if given)")
	f.StringVar(&o.listen, "listen", "", "also or instead serve TCP at HOST:PORT (loopback unless --allow-remote), with a bearer token")
	f.StringVar(&o.token, "token", "", "bearer token for --listen, visible to ps: prefer env "+api.TokenEnv+" (default: made once and kept in $SMOLVM_HOME/"+api.TokenFile+")")
	f.BoolVar(&o.allowRemote, "allow-remote", false, "allow --listen on a non-loopback address (anyone reaching it with the token controls your VMs)")
	f.Var(secondsFlag(&o.idle), "idle-timeout", "exit after this long with no request in flight and no connection open (0 = never)")
	return cmd
}

func runServe(cmd *cobra.Command, g *globalOptions, o serveOptions) error {
	if o.socket == "" && o.listen == "" {
		return usagef("nothing to serve: give --socket or --listen")
	}
	if err := statedir.Ensure(g.home); err != nil {
		return err
	}
	var ls []*server.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := api.Serving{PID: os.Getpid()}
	if o.socket != "" {
		l, err := server.ListenUnix(o.socket)
		if err != nil {
			return err
		}
		ls = append(ls, l)
		out.Socket = o.socket
		out.URLs = append(out.URLs, l.URL)
	}
	if o.listen != "" {
		token := o.token
		if token == "" {
			out.TokenFile = filepath.Join(g.home, api.TokenFile)
			var err error
			if token, err = server.LoadOrCreateToken(out.TokenFile); err != nil {
				return err
			}
		}
		l, err := server.ListenTCP(o.listen, token, o.allowRemote)
		if err != nil {
			return usageError{err}
		}
		ls = append(ls, l)
		out.URLs = append(out.URLs, l.URL)
	}
	ctx := cmd.Context()
	mcpSrv, err := mcpserver.New(ctx, mcpserver.Config{Home: g.home, Options: g.sdk(), Logger: g.logger, Version: buildVersion()})
	if err != nil {
		return err
	}
	defer func() {
		// Sessions end with the server: their unkept sandboxes go.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		mcpSrv.Close(cctx)
	}()
	srv := server.New(server.Config{
		Home: g.home, Agent: g.agent, AlpineSource: g.alpineSource, Network: g.network,
		Version: buildVersion(), Logger: g.logger, MCP: mcpSrv.Handler(),
		Keeper: keeperPath(agentPath()),
	})
	defer srv.Close()
	go srv.KeepLifetimes(ctx, server.LifetimeTick)
	if err := g.output(cmd.OutOrStdout(), out, func(w io.Writer) error {
		for _, u := range out.URLs {
			fmt.Fprintf(w, "smolvm serve: listening on %s\n", u)
		}
		if out.TokenFile != "" {
			fmt.Fprintf(w, "smolvm serve: bearer token in %s\n", out.TokenFile)
		}
		return nil
	}); err != nil {
		return err
	}
	served := ls
	ls = nil // Serve closes them
	return srv.Serve(ctx, o.idle, served...)
}
