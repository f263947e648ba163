package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/image/oci"
)

// newImageCmd is `smolvm image`: build, list, inspect and remove images.
func newImageCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and manage images (Alpine, Debian, OCI, your own), no Docker needed",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newImageBuildCmd(g), newImageListCmd(g), newImageInspectCmd(g), newImageRmCmd(g))
	return cmd
}

// builder is the image builder for g's state directory. Progress goes to
// stderr: bars on a terminal, lines otherwise.
func (g *globalOptions) builder(stderr io.Writer) *image.Builder {
	return &image.Builder{
		CacheDir: g.home, Agent: g.agent, AlpineSource: g.alpineSource,
		Progress: stderr, Logger: g.logger, OCI: oci.Puller{},
	}
}

type imageBuildOptions struct {
	name          string
	opts          image.BuildOptions
	passwordStdin bool
	keyFiles      []string
}

func newImageBuildCmd(g *globalOptions) *cobra.Command {
	var o imageBuildOptions
	cmd := &cobra.Command{
		Use:   "build --from SOURCE -t NAME",
		Short: "Build an SSH-ready image, or reuse the cached one if nothing changed",
		Long: `Build an SSH-ready image and cache it under NAME. Sources:
  alpine[:VERSION]   Alpine minirootfs release (checksum verified)
  debian[:SUITE]     minimal Debian from the archive (mmdebstrap); add --package
  oci:REF            an OCI/Docker image: registry reference, OCI layout directory
                     or 'docker save' tarball (FILE or DIR may end in :TAG)
  dir:PATH           a root filesystem directory you prepared
  tar:PATH           a root filesystem tarball (plain, gz, zst, xz, bz2)
Root always logs in with the VM's key; --password adds password logins.
Building again with the same inputs returns the cached image at once.`,
		Example: `  smolvm image build --from alpine -t alpine-ssh --password secret --size 256
  smolvm image build --from debian -t deb --package curl --package python3
  smolvm image build --from oci:docker.io/library/alpine:3.20 -t a320
  smolvm run --image deb -- dpkg -l`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runImageBuild(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.opts.From, "from", "", "source: alpine[:VERSION], debian[:SUITE], oci:REF, dir:PATH or tar:PATH (required)")
	f.StringVarP(&o.name, "tag", "t", "", "image name (required)")
	f.IntVar(&o.opts.SizeMiB, "size", 0, fmt.Sprintf("root filesystem size in MiB (default %d, or more if the files need it)", image.DefaultSizeMiB))
	f.StringVar(&o.opts.Password, "password", "", "root password for SSH and console logins (visible to ps; see --password-stdin)")
	f.BoolVar(&o.passwordStdin, "password-stdin", false, "read the root password from stdin")
	f.StringArrayVar(&o.opts.Packages, "package", nil, "extra package to install (debian only; repeatable)")
	f.StringArrayVar(&o.keyFiles, "authorized-key", nil, "public key file root also accepts (repeatable)")
	f.StringVar(&o.opts.Mirror, "mirror", "", "Alpine or Debian mirror URL (Alpine: also a local file or directory)")
	f.StringVar(&o.opts.SHA256, "sha256", "", "expected sha256 of an Alpine release smolvm does not pin")
	f.BoolVar(&o.opts.Insecure, "insecure", false, "allow an OCI registry over plain HTTP or with an unverified certificate")
	f.StringVar(&o.opts.Backend, "backend", image.BackendQEMU, "prepare the kernel for qemu (bzImage) or firecracker (vmlinux)")
	f.BoolVar(&o.opts.Force, "force", false, "rebuild even if the cached image matches")
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("tag")
	cmd.RegisterFlagCompletionFunc("from", cobra.FixedCompletions(
		[]string{"alpine", "debian", "oci:", "dir:", "tar:"}, cobra.ShellCompDirectiveNoSpace))
	cmd.RegisterFlagCompletionFunc("backend", cobra.FixedCompletions(
		[]string{image.BackendQEMU, image.BackendFirecracker}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func runImageBuild(cmd *cobra.Command, g *globalOptions, o imageBuildOptions) error {
	if o.passwordStdin {
		if o.opts.Password != "" {
			return usagef("give --password or --password-stdin, not both")
		}
		line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		o.opts.Password = strings.TrimRight(line, "\r\n")
		if o.opts.Password == "" {
			return usagef("--password-stdin: no password on stdin")
		}
	}
	for _, path := range o.keyFiles {
		data, err := os.ReadFile(path)
		if err != nil {
			return usagef("--authorized-key: %v", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				o.opts.AuthorizedKeys = append(o.opts.AuthorizedKeys, line)
			}
		}
	}
	start := time.Now()
	img, err := g.vms().BuildImage(cmd.Context(), o.name, o.opts, cmd.ErrOrStderr())
	if err != nil {
		return imageError{err}
	}
	return g.output(cmd.OutOrStdout(), img, func(w io.Writer) error {
		how := "built in " + time.Since(start).Round(time.Millisecond).String()
		if time.Since(img.Created) > time.Since(start) {
			how = "cached (" + time.Since(start).Round(time.Millisecond).String() + ")"
		}
		fmt.Fprintf(w, "image %s: %s, %s\n", img.Name, img.Source, how)
		fmt.Fprintf(w, "  rootfs  %s (%d MiB, %s on disk)\n", img.Rootfs, img.SizeMiB, imageBytes(img.DiskBytes))
		fmt.Fprintf(w, "  kernel  %s (%s)\n", img.Kernel, img.KernelFormat)
		fmt.Fprintf(w, "run it:   smolvm run --image %s -- cat /etc/os-release\n", img.Name)
		return nil
	})
}

func newImageListCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List built images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := g.vms().Images(cmd.Context())
			if err != nil {
				return imageError{err}
			}
			if imgs == nil {
				imgs = []*image.Image{}
			}
			return g.output(cmd.OutOrStdout(), imgs, func(w io.Writer) error {
				return writeImageTable(w, imgs, time.Now())
			})
		},
	}
}

func writeImageTable(w io.Writer, imgs []*image.Image, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tOS\tSIZE\tON DISK\tCREATED")
	for _, img := range imgs {
		os := img.OS
		if os == "" {
			os = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%dM\t%s\t%s\n", img.Name, imageShorten(img.Source, 48), os, img.SizeMiB,
			imageBytes(img.DiskBytes), age(now.Sub(img.Created)))
	}
	return tw.Flush()
}

func newImageInspectCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image's manifest: files, source, kernel, fingerprint",
		Args:  imageExactArgs(1, "inspect takes one image name"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return completeImages(g, args), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := g.vms().Image(cmd.Context(), args[0])
			if err != nil {
				return imageError{err}
			}
			// The manifest is the useful view in both modes.
			return writeJSON(cmd.OutOrStdout(), img)
		},
	}
}

func newImageRmCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove images (VMs made from them keep their own disks)",
		Args:    minArgs(1, "rm takes one or more image names"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return completeImages(g, args), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			removed := []string{}
			var errs []error
			for _, name := range args {
				if err := g.vms().RemoveImage(cmd.Context(), name); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, name)
			}
			if err := errors.Join(errs...); err != nil {
				return imageError{err}
			}
			return g.output(cmd.OutOrStdout(), map[string][]string{"removed": removed}, func(w io.Writer) error {
				for _, n := range removed {
					fmt.Fprintln(w, n)
				}
				return nil
			})
		},
	}
}

func imageExactArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s", msg)
		}
		return nil
	}
}

func completeImages(g *globalOptions, args []string) []cobra.Completion {
	imgs, _ := (&image.Builder{CacheDir: g.home}).List()
	var out []cobra.Completion
	for _, img := range imgs {
		out = append(out, cobra.CompletionWithDesc(img.Name, img.Source))
	}
	return out
}

// imageError makes the image package's errors match the SDK's, so --json
// reports their kind (invalid, not_found) like every other command's.
type imageError struct{ err error }

func (e imageError) Error() string { return e.err.Error() }
func (e imageError) Unwrap() error { return e.err }
func (e imageError) Is(target error) bool {
	switch target {
	case smolvm.ErrInvalid:
		return errors.Is(e.err, image.ErrInvalid) || errors.Is(e.err, image.ErrChecksum)
	case smolvm.ErrNotFound:
		return errors.Is(e.err, image.ErrNotFound)
	}
	return false
}

func imageBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n > 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return "-"
}

func imageShorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
