package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/unixsock"
)

// Start implements hypervisor.Backend.
//
// QEMU is not asked to daemonize: under its seccomp sandbox (spawn=deny)
// the fork of -daemonize is fatal. smolvm detaches it itself (own session,
// stdio to the process log) and waits until QMP answers, which QEMU does
// only once the machine is set up, so device errors still come back here.
//
// Every file QEMU needs is opened here and inherited as a descriptor
// (QEMU is given /proc/self/fd/N paths): the TAP device already attached,
// the QMP socket already listening, the VM's files as O_PATH descriptors.
// An unprivileged QEMU (spec.RunAs) thus needs no access to the state
// directory, /dev/net/tun or any other VM's files.
func (q *QEMU) Start(ctx context.Context, spec hypervisor.Spec) (hypervisor.Process, error) {
	var proc hypervisor.Process
	h, err := q.handOver(spec)
	defer h.close()
	if err != nil {
		return proc, fmt.Errorf("qemu: %w", err)
	}
	logf, err := os.OpenFile(spec.ProcessLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return proc, fmt.Errorf("qemu: process log: %w", err)
	}
	defer logf.Close()

	cmd := exec.Command(q.Binary, q.args(h.spec)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = h.files
	// Its own session: a terminal's Ctrl-C to the caller must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c := spec.RunAs; c != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}
	}
	if spec.CgroupDir != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(spec.CgroupDir.Fd())
	}
	if err := startBounded(cmd, spec.RunAs); err != nil {
		return proc, fmt.Errorf("qemu: %w", err)
	}
	// Reap it if it exits while this process lives; once this process is
	// gone, init does.
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	h.close() // QEMU holds its copies; ours would keep a dead QEMU's socket open
	proc.PID = cmd.Process.Pid
	proc.Start, _ = hypervisor.StartTime(proc.PID)

	// v1: QEMU is still setting the machine up (QMP is not served yet),
	// so no guest instruction has run outside the group.
	err = joinCgroup(spec.CgroupProcs, proc.PID)
	if err == nil {
		err = waitMonitor(ctx, spec.ControlSocket, exited)
	}
	if err == nil && spec.Restore != nil {
		err = restore(ctx, spec.ControlSocket, *spec.Restore, exited)
	}
	if err != nil {
		cmd.Process.Kill()
		<-exited
		return hypervisor.Process{}, fmt.Errorf("qemu: %w%s", err, logTail(spec.ProcessLog))
	}
	return proc, nil
}

// maxVMProcs bounds the processes and threads of a QEMU that runs as a
// user of its own (RLIMIT_NPROC): its threads and its guestfwd relays.
const maxVMProcs = 512

// nprocMu serialises startBounded: the limit it sets is the whole
// process's for a moment, and a concurrent start must not restore it
// before its own child took it.
var nprocMu sync.Mutex

// startBounded starts cmd; for a user of the VM's own (c.Own) with its
// RLIMIT_NPROC soft limit at maxVMProcs. A user-mode guest's connections
// to a guestfwd address each start a relay process as QEMU's user: the
// bound (QEMU's threads count too) keeps a guest opening connections by
// the thousand from filling the host with processes; a connection over
// it is refused, and only that VM suffers. The child inherits the limit
// at fork (setting it on another user's process afterwards would need
// CAP_SYS_RESOURCE, which a container's root may lack). Only the soft
// limit: this process could not raise its own hard limit back. QEMU
// never raises it; code that escaped into QEMU could, as it could spend
// the host's resources in other ways (docs/security.md).
func startBounded(cmd *exec.Cmd, c *hypervisor.Credential) error {
	if c == nil || !c.Own {
		return cmd.Start()
	}
	nprocMu.Lock()
	defer nprocMu.Unlock()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &old); err != nil {
		return fmt.Errorf("RLIMIT_NPROC: %w", err)
	}
	lim := unix.Rlimit{Cur: min(maxVMProcs, old.Cur), Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		return fmt.Errorf("RLIMIT_NPROC: %w", err)
	}
	err := cmd.Start()
	unix.Setrlimit(unix.RLIMIT_NPROC, &old) // a soft limit back under its hard one: permitted
	return err
}

// joinCgroup writes pid to each cgroup.procs file.
func joinCgroup(procs []string, pid int) error {
	for _, f := range procs {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	return nil
}

// waitMonitor returns once QMP answers: QEMU serves the monitor from its
// main loop, which runs only after the machine is set up.
func waitMonitor(ctx context.Context, socket string, exited <-chan struct{}) error {
	if socket == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		m, err := DialQMP(ctx, socket)
		if err == nil {
			m.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		select {
		case <-exited:
			return errors.New("exited during setup")
		default:
		}
		return err
	case <-exited:
		return errors.New("exited during setup")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 4096 {
		f.Seek(-4096, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	if s := strings.TrimSpace(string(b)); s != "" {
		return ": " + s
	}
	return ""
}

// handOver holds the descriptors QEMU inherits and the spec rewritten to
// reach them.
type handOver struct {
	spec  launchSpec
	files []*os.File
}

func (h *handOver) close() {
	for _, f := range h.files {
		f.Close()
	}
	h.files = nil
}

// add makes f QEMU's descriptor 3+i and returns the path QEMU opens it by.
func (h *handOver) add(f *os.File) string {
	h.files = append(h.files, f)
	return "/proc/self/fd/" + strconv.Itoa(2+len(h.files))
}

// addPath opens path O_PATH (no access needed, only a handle) for QEMU,
// after giving it to the VM's user where it must write or read it.
func (h *handOver) addPath(path string, flags int) (string, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return "", &os.PathError{Op: "open", Path: path, Err: err}
	}
	return h.add(os.NewFile(uintptr(fd), path)), nil
}

func (q *QEMU) handOver(spec hypervisor.Spec) (*handOver, error) {
	h := &handOver{spec: launchSpec{Spec: spec}}
	s := &h.spec
	own := func(path string) error {
		if spec.RunAs == nil {
			return nil
		}
		return os.Chown(path, int(spec.RunAs.UID), int(spec.RunAs.GID))
	}
	// The console log is made here so that it belongs to QEMU's user.
	if f, err := os.OpenFile(spec.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
		return h, err
	} else {
		f.Close()
	}
	var err error
	for _, p := range []*string{&s.Disk, &s.ConsoleLog, &s.Initrd} {
		if *p == "" {
			continue
		}
		// A file the VM's user can read already (a snapshot's initramfs,
		// shared by its clones) stays whose it is.
		shared := p == &s.Initrd && spec.RunAs != nil && readableBy(*p, spec.RunAs)
		if !shared {
			if err := own(*p); err != nil {
				return h, err
			}
		}
		if *p, err = h.addPath(*p, 0); err != nil {
			return h, err
		}
	}
	if spec.RunAs != nil && !readableBy(spec.Kernel, spec.RunAs) {
		return h, fmt.Errorf("kernel %s is not readable by the unprivileged user QEMU runs as (uid %d): make it world-readable (chmod o+r)", spec.Kernel, spec.RunAs.UID)
	}
	if s.Kernel, err = h.addPath(spec.Kernel, 0); err != nil {
		return h, err
	}
	s.Mounts = append([]hypervisor.Mount(nil), spec.Mounts...)
	for i := range s.Mounts {
		if s.Mounts[i].HostPath, err = h.addPath(spec.Mounts[i].HostPath, unix.O_DIRECTORY); err != nil {
			return h, err
		}
	}
	if spec.Net.TAP != "" {
		tap, err := openTAP(spec.Net.TAP)
		if err != nil {
			return h, err
		}
		s.tapFD = fdOf(h.add(tap))
	}
	if spec.ControlSocket != "" {
		ln, err := listenUnix(spec.ControlSocket)
		if err != nil {
			return h, err
		}
		s.qmpFD = fdOf(h.add(ln))
	}
	if spec.AgentSocket != "" {
		ln, err := listenUnix(spec.AgentSocket)
		if err != nil {
			return h, err
		}
		s.agentFD = fdOf(h.add(ln))
	}
	if spec.DiskBase != "" {
		// The snapshot's disk is read-only and its clones' users may not
		// open it: QEMU gets an open descriptor in an fd set, which its
		// block layer uses as it is, without reopening the file.
		f, err := os.OpenFile(spec.DiskBase, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return h, err
		}
		s.baseFD = fdOf(h.add(f))
		s.DiskBase = "/dev/fdset/1"
	}
	if r := spec.Restore; r != nil && r.Memory != "" {
		mem, err := sharedMemory(r.Memory, r.MemoryID)
		if err != nil {
			return h, err
		}
		s.memory = h.add(mem)
	}
	return h, nil
}

func fdOf(procPath string) int {
	n, _ := strconv.Atoi(procPath[strings.LastIndexByte(procPath, '/')+1:])
	return n
}

// readableBy reports whether c may read path by its mode bits, which is
// all that counts when it is opened through an inherited descriptor.
func readableBy(path string, c *hypervisor.Credential) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	st := fi.Sys().(*syscall.Stat_t)
	switch {
	case st.Uid == c.UID:
		return fi.Mode()&0o400 != 0
	case st.Gid == c.GID:
		return fi.Mode()&0o040 != 0
	}
	return fi.Mode()&0o004 != 0
}

// openTAP attaches to the persistent TAP device name, as QEMU would with
// ifname=, so that QEMU itself needs no access to /dev/net/tun.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: attach: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// listenUnix binds a listening UNIX socket at path (replacing a stale one)
// and returns it as a file for QEMU to inherit.
func listenUnix(path string) (*os.File, error) {
	os.Remove(path)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	err = unixsock.Path(path, func(p string) error { return unix.Bind(fd, &unix.SockaddrUnix{Name: p}) })
	if err == nil { // only root (or the caller) may talk to the monitor
		err = unixsock.Path(path, func(p string) error { return unix.Chmod(p, 0o600) })
	}
	if err == nil {
		err = unix.Listen(fd, 8)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}
