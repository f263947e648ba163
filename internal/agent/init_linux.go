package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths in the initramfs (read before switching root; the host key never
// touches the guest's disk) and in the guest's root filesystem.
const (
	persistentEnvFile = "/etc/smolvm/env.json"
	initramfsHostKey  = "/smolvm/host_key"
	initramfsAuthKeys = "/smolvm/authorized_keys"
	initramfsEnv      = "/smolvm/env.json"
	initramfsModOrder = "/lib/modules/smolvm/order"
	// Modules for host folder mounts, loaded only when a VM has some.
	initramfsMountModOrder = "/lib/modules/smolvm/mount.order"
	initramfsModDir        = "/lib/modules/smolvm"
	rootDeviceWaitTime     = 10 * time.Second
)

// Main runs the agent when this process is a smolvm VM's init (see
// IsGuestInit), and reports whether it did (it then never returns). The
// CLI calls it first, so one binary is both the host tool and the guest
// agent; anywhere else, a container's PID 1 say, it returns false at once
// and touches nothing.
func Main() bool {
	if ok, _ := IsGuestInit(); !ok {
		return false
	}
	if err := Init(); err != nil {
		console("smolvm-init: %v", err)
	}
	powerOff()
	return true
}

// IsGuestInit reports whether this process is the init of a smolvm VM,
// and if not, why not. Being PID 1 is not enough: the binary may be a
// container's entrypoint, where taking over would mount, kill every
// process in sight and power off. It also takes smolvm's keys on the
// kernel command line (the host always sets smolvm.hostname= and
// smolvm.ip=) and the per-VM files of smolvm's initramfs.
func IsGuestInit() (bool, string) {
	pid := os.Getpid()
	if pid != 1 {
		return guestInitDecision(pid, "", false)
	}
	// The cheap look first: without our initramfs, /proc is not touched.
	if _, err := os.Stat(initramfsHostKey); err != nil {
		return guestInitDecision(pid, "", false)
	}
	return guestInitDecision(pid, readCmdline(), true)
}

// readCmdline reads the kernel command line. A real boot starts init
// without /proc, so it is mounted for the look and, unless this turns out
// to be a guest (whose Init mounts it anyway), unmounted again.
func readCmdline() string {
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		return string(b)
	}
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return ""
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil || !hasSmolvmKey(string(b)) {
		unix.Unmount("/proc", unix.MNT_DETACH)
	}
	return string(b)
}

// guestInitDecision is IsGuestInit's rule, apart from where its inputs
// come from.
func guestInitDecision(pid int, cmdline string, haveInitramfs bool) (bool, string) {
	switch {
	case pid != 1:
		return false, fmt.Sprintf("not PID 1 (PID %d)", pid)
	case !haveInitramfs:
		return false, "PID 1, but " + initramfsHostKey + " is missing: not a smolvm VM's initramfs (a container entrypoint?)"
	case !hasSmolvmKey(cmdline):
		return false, "PID 1, but the kernel command line has no smolvm.* key: not a smolvm VM"
	}
	return true, ""
}

// hasSmolvmKey reports whether a kernel command line carries one of our
// keys.
func hasSmolvmKey(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "smolvm.") {
			return true
		}
	}
	return false
}

// Init boots the guest from the initramfs: modules, root filesystem, switch
// to it, network, then serves SSH and reaps orphans forever.
func Init() error {
	start := time.Now()
	catchInitSignals()
	reaper := NewReaper()
	for _, m := range []struct{ src, dst, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	// The guest's root filesystem has no modules for this kernel, so the
	// kernel's calls to modprobe (for IPv6 sockets, say) can only fail,
	// slowly: each starts a process. An empty path makes them fail at once.
	os.WriteFile("/proc/sys/kernel/modprobe", []byte("\n"), 0o644)
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	cfg, err := ParseCmdline(string(cmdline))
	if err != nil {
		return err
	}
	step := func(name string) {
		if cfg.Debug {
			console("smolvm-init: %s at %v (uptime %s)", name, time.Since(start).Round(time.Millisecond), uptime())
		}
	}
	if err := loadModules(initramfsModOrder); err != nil {
		return err
	}
	if len(cfg.Mounts) > 0 {
		if err := loadModules(initramfsMountModOrder); err != nil {
			return fmt.Errorf("folder mounts: %w", err)
		}
	}
	step("modules loaded")
	// Read the per-VM files before the initramfs goes out of sight.
	hostKey, _ := os.ReadFile(initramfsHostKey)
	authKeys, _ := os.ReadFile(initramfsAuthKeys)
	envJSON, _ := os.ReadFile(initramfsEnv)

	if err := mountRoot(cfg); err != nil {
		return err
	}
	step("root mounted")
	if err := switchRoot("/newroot"); err != nil {
		return err
	}
	if err := mountSystem(); err != nil {
		return err
	}
	step("switched root")
	srv, err := newServerFromFiles(hostKey, authKeys, reaper)
	if err != nil {
		return err
	}
	for _, m := range cfg.Mounts {
		if err := mountShared(m); err != nil {
			console("smolvm-init: %v", err)
		}
	}
	if len(envJSON) > 0 {
		if err := mergeEnv(persistentEnvFile, envJSON); err != nil {
			console("smolvm-init: env: %v", err)
		}
	}
	if cfg.Hostname != "" {
		unix.Sethostname([]byte(cfg.Hostname))
	}
	step("files written")
	if err := configureNetwork(cfg, step); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	step("network up")
	if err := applyProxy(srv, cfg.Proxy); err != nil {
		console("smolvm-init: proxy: %v", err)
	}
	go serveControlPort(srv)
	go serve(srv)
	reaper.Run(context.Background())
	return nil
}

func loadModules(orderFile string) error {
	order, err := os.ReadFile(orderFile)
	if err != nil {
		return nil // a kernel with the drivers built in
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join(initramfsModDir, name))
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return nil
}

func mountRoot(cfg BootConfig) error {
	deadline := time.Now().Add(rootDeviceWaitTime)
	for {
		if _, err := os.Stat(cfg.Root); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within %v", cfg.Root, rootDeviceWaitTime)
		}
		time.Sleep(2 * time.Millisecond)
	}
	os.MkdirAll("/newroot", 0o755)
	if err := unix.Mount(cfg.Root, "/newroot", cfg.RootType, unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount root %s (%s): %w", cfg.Root, cfg.RootType, err)
	}
	return nil
}

// switchRoot makes newRoot the root, as switch_root(8) does, carrying the
// virtual filesystems along. The initramfs stays underneath: the running
// agent is its /init and the SSH server child is started from it.
func switchRoot(newRoot string) error {
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		dst := newRoot + d
		os.MkdirAll(dst, 0o755)
		if err := unix.Mount(d, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", d, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

func mountSystem() error {
	for _, m := range []struct {
		src, dst, typ, opts string
		flags               uintptr
	}{
		// devpts must allow device nodes: its files are the terminals.
		{"devpts", "/dev/pts", "devpts", "gid=5,mode=0620,ptmxmode=0666", unix.MS_NOSUID | unix.MS_NOEXEC},
		{"shm", "/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
		{"run", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, m.flags, m.opts); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	return nil
}

// mergeEnv adds the variables the VM was configured with to the persistent
// set, so they survive restarts and SetEnv changes made since stay too.
func mergeEnv(path string, envJSON []byte) error {
	var add map[string]string
	if err := json.Unmarshal(envJSON, &add); err != nil {
		return err
	}
	cur := map[string]string{}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &cur)
	}
	for k, v := range add {
		cur[k] = v
	}
	b, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// catchInitSignals keeps PID 1 alive on SIGTERM, SIGINT and SIGHUP (Go
// exits on them by default, and init exiting panics the kernel). It
// catches them rather than ignoring them: an ignored signal stays ignored
// across fork and exec, so every command the agent starts would inherit
// it (`kill PID` and `timeout` would do nothing in the guest), while a
// caught one is reset to its default by exec. Go's os/exec offers no hook
// to reset dispositions in the child, so the parent must not hold any.
// The signal mask children get is the one this process started with,
// which for init is empty.
func catchInitSignals() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	go func() {
		for range sig {
		}
	}()
}

// serve runs the SSH server in PID 1 itself: a second process would cost
// another Go start-up on every boot. The reaper keeps PID 1's orphan
// reaping away from the server's own children.
func serve(srv *Server) {
	for {
		ln, err := net.Listen("tcp4", "0.0.0.0:22")
		if err != nil {
			console("smolvm-agent: listen: %v", err)
			time.Sleep(time.Second)
			continue
		}
		console("smolvm-agent: ready (uptime %s)", uptime())
		// Run the shell once while the host connects, so the first command
		// finds it in the page cache (and, under emulation, translated).
		go func() {
			cmd := exec.Command(rootShell(passwdFile), "-c", ":")
			if srv.startProcess(cmd) == nil {
				cmd.Wait()
				srv.processDone(cmd.Process.Pid)
			}
		}()
		err = srv.Serve(context.Background(), ln)
		console("smolvm-agent: SSH server stopped (%v); restarting", err)
		time.Sleep(100 * time.Millisecond)
	}
}

// powerOff stops every process, flushes the disk and turns the VM off. QEMU
// runs with -no-reboot, so a reset ends it too if power-off is refused.
func powerOff() {
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) && othersAlive() {
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

// othersAlive reports whether any process other than this one and the
// kernel's threads still runs.
func othersAlive() bool {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self || pid == 1 {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return true
		}
	}
	return false
}

func console(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// uptime is the time since the kernel started, as /proc/uptime says.
func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f, _, _ := strings.Cut(string(b), " ")
	return f + "s"
}

// mountShared mounts a host folder shared over virtio-9p. Read-only is
// enforced by the host (QEMU's fsdev readonly) and by the mount flags.
func mountShared(m Mount) error {
	if err := os.MkdirAll(m.Path, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.Path, err)
	}
	var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	opts := "trans=virtio,version=9p2000.L,msize=262144,cache=none"
	if err := unix.Mount(m.Tag, m.Path, "9p", flags, opts); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.Tag, m.Path, err)
	}
	return nil
}
