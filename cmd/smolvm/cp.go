package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

func newCpCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between the host and a VM",
		Long: "Copy a file or directory tree into a VM (cp LOCAL ID:PATH) or out of it\n" +
			"(cp ID:PATH LOCAL), over SFTP on the VM's SSH connection, as cp -r does: if DST\n" +
			"is an existing directory, SRC lands inside it under its own name (SRC/. copies\n" +
			"its contents); otherwise SRC becomes DST, and missing parent directories are\n" +
			"made. Symlinks are copied as symlinks, never followed. Out of a VM, files lose\n" +
			"setuid, setgid, sticky and group/other write bits, devices and FIFOs are\n" +
			"skipped with a warning, and nothing the guest sends can write outside DST.",
		Example:      "  smolvm cp ./app web:/opt/app\n  smolvm cp web:/var/log/app.log .",
		Args:         cobra.ExactArgs(2),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, srcPath, srcRemote := splitRemote(args[0])
			dstVM, dstPath, dstRemote := splitRemote(args[1])
			if srcRemote == dstRemote {
				return usagef("exactly one of SRC and DST must be ID:PATH")
			}
			id, upload := dstVM, true
			if srcRemote {
				id, upload = srcVM, false
			}
			return withVM(cmd.Context(), g, id, func(vm machine) error {
				var err error
				if upload {
					err = vm.Upload(cmd.Context(), srcPath, dstPath)
				} else {
					err = vm.Download(cmd.Context(), srcPath, dstPath)
				}
				if err != nil {
					return err
				}
				return g.output(cmd.OutOrStdout(), map[string]string{"from": args[0], "to": args[1]}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s -> %s\n", args[0], args[1])
					return err
				})
			})
		},
	}
}

// splitRemote splits "ID:PATH". A local path with a ':' can be given as
// ./name:with:colons.
func splitRemote(s string) (id, path string, remote bool) {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return "", s, false
	}
	id, path, ok := strings.Cut(s, ":")
	if !ok || id == "" || path == "" {
		return "", s, false
	}
	return id, path, true
}
