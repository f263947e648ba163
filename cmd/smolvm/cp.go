package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// archiveCopier is a machine that can copy with cp -a's semantics:
// localVM through the SDK's methods, remoteVM below.
type archiveCopier interface {
	UploadWith(ctx context.Context, local, guestPath string, o smolvm.CopyOptions) error
	DownloadWith(ctx context.Context, guestPath, local string, o smolvm.CopyOptions) error
}

var (
	_ archiveCopier = localVM{}
	_ archiveCopier = (*remoteVM)(nil)
)

func (v *remoteVM) UploadWith(ctx context.Context, local, guestPath string, o smolvm.CopyOptions) error {
	return v.c.UploadWith(ctx, v.info.ID, local, guestPath, nil, o)
}

func (v *remoteVM) DownloadWith(ctx context.Context, guestPath, local string, o smolvm.CopyOptions) error {
	return v.c.DownloadWith(ctx, v.info.ID, guestPath, local, nil, o)
}

func newCpCmd(g *globalOptions) *cobra.Command {
	var archive, recursive bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between the host and a VM",
		Long: "Copy a file or directory tree into a VM (cp LOCAL ID:PATH) or out of it\n" +
			"(cp ID:PATH LOCAL), over SFTP on the VM's SSH connection, as cp -r does: if DST\n" +
			"is an existing directory, SRC lands inside it under its own name (SRC/. copies\n" +
			"its contents); otherwise SRC becomes DST, and missing parent directories are\n" +
			"made. Directories are always copied whole (-r is accepted for habit's sake).\n" +
			"Symlinks are copied as symlinks, never followed. Permission bits are kept;\n" +
			"out of a VM, files lose setuid, setgid, sticky and (without -a) group/other\n" +
			"write bits, as cp does under umask 022; copies get the time of the copy\n" +
			"unless -a keeps the modification times. Devices and FIFOs are skipped with\n" +
			"a warning, and nothing the guest sends can write outside DST.",
		Example:      "  smolvm cp ./app web:/opt/app\n  smolvm cp web:/var/log/app.log .\n  smolvm cp -a web:/srv/site ./backup",
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
				ac, ok := vm.(archiveCopier)
				switch {
				case archive && !ok:
					return errLocalOnly("cp -a", "copy without -a, or run it on the server's machine")
				case archive && upload:
					err = ac.UploadWith(cmd.Context(), srcPath, dstPath, smolvm.CopyOptions{Archive: true})
				case archive:
					err = ac.DownloadWith(cmd.Context(), srcPath, dstPath, smolvm.CopyOptions{Archive: true})
				case upload:
					err = vm.Upload(cmd.Context(), srcPath, dstPath)
				default:
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
	cmd.Flags().BoolVarP(&archive, "archive", "a", false, "keep modification times, and out of a VM group/other write bits too")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "accepted and ignored: directories are always copied whole")
	return cmd
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
