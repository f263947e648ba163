package main

import (
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

func newEnvCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Manage a running VM's persistent environment variables",
		Long: "Set, unset and list environment variables that every later command in a\n" +
			"running VM sees, also after it restarts. Variables given at create (-e)\n" +
			"are the same set: once changed or unset here they stay so across restarts\n" +
			"(smolvm info shows the stored set as config.env).",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	cmd.AddCommand(newEnvSetCmd(g), newEnvUnsetCmd(g), newEnvListCmd(g))
	return cmd
}

func newEnvSetCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "set ID NAME=VALUE...",
		Short:             "Set environment variables",
		Example:           "  smolvm env set web APP_ENV=dev DEBUG=1",
		Args:              minArgs(2, "need a VM id and NAME=VALUE pairs: smolvm env set ID NAME=VALUE..."),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			vars, err := parseEnv(args[1:])
			if err != nil {
				return err
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				env, err := vm.SetEnv(cmd.Context(), vars)
				if err != nil {
					return err
				}
				return printEnvResult(g, cmd.OutOrStdout(), env)
			})
		},
	}
}

func newEnvUnsetCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "unset ID NAME...",
		Short:             "Remove environment variables",
		Args:              minArgs(2, "need a VM id and variable names: smolvm env unset ID NAME..."),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, name := range args[1:] {
				if err := smolvm.ValidateEnvName(name); err != nil {
					return err
				}
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				env, err := vm.UnsetEnv(cmd.Context(), args[1:]...)
				if err != nil {
					return err
				}
				return printEnvResult(g, cmd.OutOrStdout(), env)
			})
		},
	}
}

func newEnvListCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "list ID",
		Aliases:           []string{"ls"},
		Short:             "List environment variables",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				env, err := vm.Env(cmd.Context())
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), nonNil(env), func(w io.Writer) error {
					return writeEnv(w, env)
				})
			})
		},
	}
}

// printEnvResult prints the environment after a change in --json mode;
// in text mode a change prints nothing.
func printEnvResult(g *globalOptions, w io.Writer, env map[string]string) error {
	return g.output(w, nonNil(env), func(io.Writer) error { return nil })
}

// writeEnv prints NAME=VALUE lines, sorted by name.
func writeEnv(w io.Writer, env map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if _, err := fmt.Fprintf(w, "%s=%s\n", k, env[k]); err != nil {
			return err
		}
	}
	return nil
}

// nonNil makes an empty environment print as {} rather than null.
func nonNil(env map[string]string) map[string]string {
	if env == nil {
		return map[string]string{}
	}
	return env
}

// minArgs requires at least n arguments, explaining what is missing.
func minArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("%s", msg)
		}
		return nil
	}
}
