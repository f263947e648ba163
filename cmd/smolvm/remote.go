package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/apiclient"
)

// connect makes the client of the server g.host names, with the token
// from --token, SMOLVM_TOKEN or (for a server of this machine's state
// directory) its token file.
func (g *globalOptions) connect() error {
	token := g.token
	if token == "" {
		token = os.Getenv(api.TokenEnv)
	}
	if token == "" && strings.HasPrefix(g.host, "tcp://") && g.sameMachine() {
		// The server keeps a generated token there, mode 0600: readable
		// by the user it runs as, which is who may use it. Only a server
		// on this machine can be the one that made it; elsewhere the token
		// must be given, so this one is never sent away.
		if b, err := os.ReadFile(filepath.Join(g.home, api.TokenFile)); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	c, err := apiclient.New(g.host, token)
	if err != nil {
		return usageError{err}
	}
	g.remote = c
	return nil
}

// sameMachine reports whether the server g talks to runs on this machine
// (a UNIX socket, or TCP on a loopback address), so that host paths mean
// the same to it.
func (g *globalOptions) sameMachine() bool {
	u, err := url.Parse(g.host)
	if err != nil {
		return false
	}
	if u.Scheme == "unix" {
		return true
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// remoteHost is a smolvm server's VMs, snapshots and images.
type remoteHost struct{ g *globalOptions }

var _ vmHost = remoteHost{}

func (h remoteHost) c() *apiclient.Client { return h.g.remote }

func (h remoteHost) Create(ctx context.Context, cfg smolvm.VMConfig, cold bool) (machine, error) {
	req := api.CreateVM{
		ID: cfg.ID, VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB, DiskMiB: cfg.DiskMiB, Image: cfg.Image,
		Env: cfg.Env, NoEgress: cfg.NoEgress, Egress: cfg.Egress, DNSUpstream: cfg.DNSUpstream, RetainDiskOnDelete: cfg.RetainDiskOnDelete, ReuseDisk: cfg.ReuseDisk,
		Cold: cold, Limits: cfg.Limits, TTLSeconds: cfg.TTL.Seconds(), OnExpire: cfg.OnExpire, Labels: cfg.Labels,
	}
	if h.g.network != smolvm.NetworkAuto {
		req.Network = h.g.network
	}
	if len(cfg.Mounts) > 0 {
		if !h.g.sameMachine() {
			return nil, errLocalOnly("--mount", "a mount shares a folder of the server's machine; give --mount to a smolvm running there")
		}
		for _, m := range cfg.Mounts {
			// The server resolves paths from its own working directory.
			abs, err := filepath.Abs(m.HostPath)
			if err != nil {
				return nil, usagef("--mount %s: %v", m.HostPath, err)
			}
			m.HostPath = abs
			req.Mounts = append(req.Mounts, m)
		}
	}
	info, err := h.c().CreateVM(ctx, req)
	if err != nil {
		return nil, err
	}
	return &remoteVM{c: h.c(), info: info, bootTimeout: cfg.BootTimeout, secrets: h.g.startSecrets}, nil
}

func (h remoteHost) FromSnapshot(ctx context.Context, name string, o snapshotVM) (machine, error) {
	info, err := h.c().CreateVM(ctx, api.CreateVM{
		FromSnapshot: name, ID: o.id, Env: o.env, BootTimeoutSeconds: o.bootTimeout.Seconds(), Secrets: h.g.startSecrets,
	})
	if err != nil {
		return nil, err
	}
	return &remoteVM{c: h.c(), info: info}, nil
}

func (h remoteHost) Open(ctx context.Context, id string) (machine, error) {
	info, err := h.c().VM(ctx, id)
	if err != nil {
		return nil, err
	}
	return &remoteVM{c: h.c(), info: info, secrets: h.g.startSecrets}, nil
}

func (h remoteHost) List(ctx context.Context) ([]smolvm.VMInfo, error) {
	vms, err := h.c().ListVMs(ctx, "", "")
	if vms == nil && err == nil {
		vms = []smolvm.VMInfo{}
	}
	return vms, err
}

func (h remoteHost) ListSnapshots(ctx context.Context) ([]smolvm.SnapshotInfo, error) {
	s, err := h.c().Snapshots(ctx)
	if s == nil && err == nil {
		s = []smolvm.SnapshotInfo{}
	}
	return s, err
}

func (h remoteHost) GetSnapshot(ctx context.Context, name string) (*smolvm.SnapshotInfo, error) {
	return h.c().GetSnapshot(ctx, name)
}

func (h remoteHost) RemoveSnapshot(ctx context.Context, name string) error {
	return h.c().RemoveSnapshot(ctx, name)
}

func (h remoteHost) RemoveKeptDisk(ctx context.Context, id string) error {
	return h.c().RemoveKeptDisk(ctx, id)
}

func (h remoteHost) BuildImage(ctx context.Context, name string, o image.BuildOptions, stderr io.Writer) (*image.Image, error) {
	if o.Backend != "" && o.Backend != image.BackendQEMU {
		return nil, errLocalOnly("--backend "+o.Backend, "a server builds images for its own backend")
	}
	return h.c().BuildImage(ctx, api.BuildImage{
		Name: name, From: o.From, SizeMiB: o.SizeMiB, Password: o.Password, AuthorizedKeys: o.AuthorizedKeys,
		Packages: o.Packages, Mirror: o.Mirror, SHA256: o.SHA256, Insecure: o.Insecure, Force: o.Force,
	}, func(msg string) {
		if stderr != nil {
			io.WriteString(stderr, strings.TrimRight(msg, "\n")+"\n")
		}
	})
}

func (h remoteHost) Images(ctx context.Context) ([]*image.Image, error) { return h.c().Images(ctx) }

func (h remoteHost) Image(ctx context.Context, name string) (*image.Image, error) {
	return h.c().Image(ctx, name)
}

func (h remoteHost) RemoveImage(ctx context.Context, name string) error {
	return h.c().RemoveImage(ctx, name)
}

func (h remoteHost) Doctor(ctx context.Context) ([]smolvm.Check, error) { return h.c().Doctor(ctx) }

// remoteVM is a VM of a smolvm server. info is the last state the server
// sent.
type remoteVM struct {
	c           *apiclient.Client
	info        smolvm.VMInfo
	bootTimeout time.Duration     // the config's, for the first start
	secrets     map[string]string // start secrets (--secret), for Start
}

var _ machine = (*remoteVM)(nil)

func (v *remoteVM) ID() string          { return v.info.ID }
func (v *remoteVM) Info() smolvm.VMInfo { return v.info }
func (v *remoteVM) Close() error        { return nil }

// update keeps info when a call returned one.
func (v *remoteVM) update(info smolvm.VMInfo, err error) error {
	if err == nil {
		v.info = info
	}
	return err
}

func (v *remoteVM) Start(ctx context.Context) error {
	if v.secrets != nil {
		return v.update(v.c.StartVMWithSecrets(ctx, v.info.ID, v.bootTimeout, v.secrets))
	}
	return v.update(v.c.StartVM(ctx, v.info.ID, v.bootTimeout))
}

func (v *remoteVM) Stop(ctx context.Context, timeout time.Duration) error {
	return v.update(v.c.StopVM(ctx, v.info.ID, timeout))
}

func (v *remoteVM) Pause(ctx context.Context, toDisk bool) error {
	return v.update(v.c.PauseVM(ctx, v.info.ID, toDisk))
}

func (v *remoteVM) Resume(ctx context.Context) error {
	return v.update(v.c.ResumeVM(ctx, v.info.ID))
}

func (v *remoteVM) Delete(ctx context.Context) error { return v.c.DeleteVM(ctx, v.info.ID) }

// serverGrace is how long past a command's timeout the server has to
// report it, before the client stops waiting for a server that hangs.
const serverGrace = 30 * time.Second

func (v *remoteVM) Exec(ctx context.Context, cmd string, o smolvm.ExecOptions) (int, error) {
	return v.exec(ctx, api.Exec{Cmd: cmd}, o, cmd)
}

// exec runs req (a command line or an argv; cmd names it in errors)
// with o's settings, streaming.
func (v *remoteVM) exec(ctx context.Context, req api.Exec, o smolvm.ExecOptions, cmd string) (int, error) {
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout+serverGrace)
		defer cancel()
	}
	req.Env, req.TimeoutSeconds, req.TTY, req.Dir, req.User, req.Secrets = o.Env, o.Timeout.Seconds(), o.TTY, o.Dir, o.User, o.Secrets
	code, err := v.c.ExecStream(ctx, v.info.ID, req, apiclient.Stdio{Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr})
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		return -1, &smolvm.TimeoutError{Op: "run", VM: v.info.ID, Timeout: o.Timeout,
			Detail: "the server did not report the end of the command " + serverGrace.String() + " after its timeout: " + cmd}
	}
	return code, err
}

func (v *remoteVM) Shell(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, term string, width, height int, resize <-chan [2]int) (int, error) {
	return v.c.Shell(ctx, v.info.ID, term, width, height, apiclient.Stdio{Stdin: stdin, Stdout: stdout, Stderr: stderr, Resize: resize})
}

func (v *remoteVM) Env(ctx context.Context) (map[string]string, error) {
	return v.c.Env(ctx, v.info.ID)
}

func (v *remoteVM) SetEnv(ctx context.Context, vars map[string]string) (map[string]string, error) {
	return v.c.PatchEnv(ctx, v.info.ID, api.EnvPatch{Set: vars})
}

func (v *remoteVM) SetEgressPolicy(ctx context.Context, p smolvm.EgressPolicy) error {
	return v.update(v.c.PutPolicy(ctx, v.info.ID, p))
}

func (v *remoteVM) UnsetEnv(ctx context.Context, keys ...string) (map[string]string, error) {
	return v.c.PatchEnv(ctx, v.info.ID, api.EnvPatch{Unset: keys})
}

func (v *remoteVM) Upload(ctx context.Context, local, guestPath string) error {
	return v.c.Upload(ctx, v.info.ID, local, guestPath, nil)
}

func (v *remoteVM) Download(ctx context.Context, guestPath, local string) error {
	return v.c.Download(ctx, v.info.ID, guestPath, local, nil)
}

func (v *remoteVM) Expose(ctx context.Context, p portSpec) (smolvm.PortForward, error) {
	return v.c.Expose(ctx, v.info.ID, api.Expose{GuestPort: p.guestPort, HostPort: p.hostPort, HostAddr: p.addr})
}

func (v *remoteVM) Unexpose(ctx context.Context, hostAddr string, hostPort int) error {
	return v.c.Unexpose(ctx, v.info.ID, hostAddr, hostPort)
}

func (v *remoteVM) Forwards(ctx context.Context) ([]smolvm.PortForward, error) {
	return v.c.Ports(ctx, v.info.ID)
}

func (v *remoteVM) Logs(ctx context.Context, follow bool, w io.Writer) error {
	body, err := v.c.Logs(ctx, v.info.ID, follow, 0)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(w, body)
	if follow && ctx.Err() != nil {
		return nil // Ctrl-C ends a follow, as locally
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func (v *remoteVM) Snapshot(ctx context.Context, name string, diskOnly bool) (*smolvm.SnapshotInfo, error) {
	return v.c.Snapshot(ctx, v.info.ID, api.CreateSnapshot{Name: name, DiskOnly: diskOnly})
}

func (v *remoteVM) Fork(ctx context.Context, n int) ([]smolvm.VMInfo, error) {
	return v.c.Fork(ctx, v.info.ID, n)
}
