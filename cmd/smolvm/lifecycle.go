package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

type createOptions struct {
	vm           vmFlags
	secrets      secretFlags
	noStart      bool
	reuseDisk    bool
	ports        []string
	fromSnapshot string
}

func newCreateCmd(g *globalOptions) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a VM and start it",
		Long: "Create a VM and start it. It prints the VM's id (--json: its info).\n" +
			"A VM that fails to start is deleted again, unless --no-start was given.",
		Example: "  smolvm create --name web --memory 1024 --env APP_ENV=dev\n" +
			"  smolvm create --from-snapshot warm --name web2",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.takeStartSecrets(o.secrets, o.noStart); err != nil {
				return err
			}
			if o.fromSnapshot != "" {
				if err := checkFromSnapshot(cmd); err != nil {
					return err
				}
				vm, err := fromSnapshot(cmd.Context(), g, o.fromSnapshot, o.vm)
				if err != nil {
					return err
				}
				defer vm.Close()
				return printInfo(g, cmd.OutOrStdout(), vm.Info())
			}
			return runCreate(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	o.vm.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&o.vm.name, "name", "", "VM id (default: a random vm-xxxxxxxx)")
	fs.BoolVar(&o.noStart, "no-start", false, "create the VM but do not start it")
	fs.BoolVar(&o.vm.retainDisk, "retain-disk", false, "keep the VM's disk file when it is deleted (reuse it with --reuse-disk, remove it with delete --disk)")
	fs.BoolVar(&o.reuseDisk, "reuse-disk", false, "boot the disk a deleted VM of this --name kept (implies --retain-disk)")
	fs.StringArrayVarP(&o.ports, "publish", "p", nil, "expose a guest port, [ADDR:][HOSTPORT:]GUESTPORT (repeatable)")
	fs.StringVar(&o.fromSnapshot, "from-snapshot", "", "make the VM from a snapshot (smolvm snapshot list): it resumes as the snapshot was taken, with its CPUs, memory and disk")
	cmd.RegisterFlagCompletionFunc("from-snapshot", completeSnapshots(g, 0))
	o.secrets.register(cmd, "of the VM's commands until it stops (kept in guest memory only; give it again at the next start)")
	return cmd
}

func runCreate(ctx context.Context, g *globalOptions, o createOptions, w io.Writer) error {
	cfg, err := o.vm.config()
	if err != nil {
		return err
	}
	cfg.ReuseDisk = o.reuseDisk
	var ports []portSpec
	for _, s := range o.ports {
		p, err := parsePort(s)
		if err != nil {
			return err
		}
		ports = append(ports, p)
	}
	vm, err := g.vms().Create(ctx, cfg, o.vm.cold)
	if err != nil {
		return err
	}
	defer vm.Close()
	for _, p := range ports {
		if _, err := vm.Expose(ctx, p); err != nil {
			return errors.Join(err, vm.Delete(context.WithoutCancel(ctx)))
		}
	}
	if !o.noStart {
		if err := vm.Start(ctx); err != nil {
			// As smolvm.Start does: a VM that cannot start is not kept.
			return errors.Join(err, vm.Delete(context.WithoutCancel(ctx)))
		}
	}
	return printInfo(g, w, vm.Info())
}

// printInfo prints a VM's id, or its VMInfo in --json mode.
func printInfo(g *globalOptions, w io.Writer, info smolvm.VMInfo) error {
	return g.output(w, info, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, info.ID)
		return err
	})
}

func newStartCmd(g *globalOptions) *cobra.Command {
	var secrets secretFlags
	cmd := &cobra.Command{
		Use:               "start ID",
		Short:             "Start a created or stopped VM",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.takeStartSecrets(secrets, false); err != nil {
				return err
			}
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if err := vm.Start(cmd.Context()); err != nil {
					return err
				}
				return printInfo(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
	secrets.register(cmd, "of the VM's commands until it stops (kept in guest memory only; give it again at the next start)")
	return cmd
}

type stopOptions struct {
	timeout time.Duration
}

func newStopCmd(g *globalOptions) *cobra.Command {
	var o stopOptions
	cmd := &cobra.Command{
		Use:               "stop ID",
		Short:             "Shut a VM down (it can be started again)",
		Long:              "Shut a VM down cleanly, or kill it when it has not stopped after --timeout.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if err := vm.Stop(cmd.Context(), o.timeout); err != nil {
					return err
				}
				return printInfo(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
	cmd.Flags().Var(secondsFlag(&o.timeout), "timeout", fmt.Sprintf("kill the VM if it has not shut down after this long: seconds, or a duration such as 1.5s or 2m (0 = default, %s)", smolvm.DefaultStopTimeout))
	return cmd
}

type deleteOptions struct {
	all  bool
	disk bool
}

func newDeleteCmd(g *globalOptions) *cobra.Command {
	var o deleteOptions
	cmd := &cobra.Command{
		Use:     "delete ID... | --all | --disk ID...",
		Aliases: []string{"rm"},
		Short:   "Delete VMs: process, network, state and files",
		Long: "Delete VMs: process, network, state and files. A VM created with --retain-disk\n" +
			"keeps its disk; `delete --disk ID` removes such a kept disk of a deleted VM.",
		ValidArgsFunction: completeIDs(g, 0),
		SilenceUsage:      true,
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case o.all && len(args) > 0:
				return usagef("give VM ids or --all, not both")
			case o.all && o.disk:
				return usagef("--disk takes the ids of deleted VMs whose disks were kept, not --all")
			case !o.all && len(args) == 0:
				return usagef("no VM given: name the VMs to delete, or pass --all")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDelete(cmd.Context(), g, o, args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.all, "all", false, "delete every VM")
	cmd.Flags().BoolVar(&o.disk, "disk", false, "remove the disks deleted VMs with these ids kept (--retain-disk)")
	return cmd
}

func runDelete(ctx context.Context, g *globalOptions, o deleteOptions, ids []string, w io.Writer) error {
	if o.all {
		vms, err := g.vms().List(ctx)
		if err != nil {
			return err
		}
		for _, vm := range vms {
			ids = append(ids, vm.ID)
		}
	}
	deleted := []string{}
	var errs []error
	for _, id := range ids {
		var err error
		if o.disk {
			err = g.vms().RemoveKeptDisk(ctx, id)
		} else {
			err = withVM(ctx, g, id, func(vm machine) error { return vm.Delete(ctx) })
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, id)
		if !g.json {
			fmt.Fprintln(w, id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if g.json {
		return writeJSON(w, struct {
			Deleted []string `json:"deleted"`
		}{deleted})
	}
	return nil
}

func newPauseCmd(g *globalOptions) *cobra.Command {
	var toDisk bool
	cmd := &cobra.Command{
		Use:   "pause ID",
		Short: "Freeze a running VM's vCPUs (resume continues it)",
		Long: "Freeze a running VM's vCPUs; resume continues it.\n" +
			"With --to-disk the VM hibernates: its memory goes to its directory and its QEMU exits, so it holds\n" +
			"no host memory; resume (or start) brings it back with its processes, even after a host reboot of smolvm's processes.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if err := vm.Pause(cmd.Context(), toDisk); err != nil {
					return err
				}
				return printInfo(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
	cmd.Flags().BoolVar(&toDisk, "to-disk", false, "hibernate: memory to disk, QEMU ends (resume brings it back)")
	return cmd
}

func newResumeCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "resume ID",
		Short:             "Continue a paused VM",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeIDs(g, 1),
		SilenceUsage:      true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd.Context(), g, args[0], func(vm machine) error {
				if err := vm.Resume(cmd.Context()); err != nil {
					return err
				}
				return printInfo(g, cmd.OutOrStdout(), vm.Info())
			})
		},
	}
}
