package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/shell"
)

const (
	// controlPortWait bounds the look for the control port at boot: the
	// device appears while the drivers probe, long before the network is
	// up, so this only runs out on a VM started without one.
	controlPortWait = 5 * time.Second
	// controlFallback is how often a waiting agent looks at the port
	// without being told to. SIGIO says when the host connects; the timer
	// only covers a lost signal, and costs one read() per period.
	controlFallback = 30 * time.Second

	machineIDFile = "/etc/machine-id"
	hostnameFile  = "/etc/hostname"
)

// serveControlPort serves the host's control channel on the virtio serial
// port named ControlPortName, forever. It never polls: while the host is
// connected it blocks in read(); while it is not, read() returns 0 at
// once, so it sleeps until the kernel's SIGIO says the host connected.
func serveControlPort(srv *Server) {
	dev, err := findControlPort(ControlPortName, controlPortWait)
	if err != nil {
		console("smolvm-agent: control port: %v", err)
		return
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		console("smolvm-agent: control port: open %s: %v", dev, err)
		return
	}
	// Subscribe before arming the fd, so no SIGIO is lost; the kernel
	// sends one when the host connects or disconnects and when data comes.
	wake := make(chan os.Signal, 1)
	signal.Notify(wake, unix.SIGIO)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
		console("smolvm-agent: control port: F_SETOWN: %v", err)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_ASYNC); err != nil {
			console("smolvm-agent: control port: O_ASYNC: %v", err)
		}
	}
	port := rawFD(fd)
	apply := func(id Identity) error { return applyIdentity(srv, id) }
	fallback := time.NewTimer(controlFallback)
	for {
		if err := ServeControl(port, port, apply); err != nil {
			console("smolvm-agent: control port: %v", err)
		}
		// The host is not connected (or the port failed): wait for news.
		select {
		case <-wake:
		case <-fallback.C:
		}
		fallback.Reset(controlFallback)
	}
}

// findControlPort returns the device node of the virtio serial port called
// name.
func findControlPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/vport*/name")
		for _, p := range ports {
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio port named %s within %v (is virtio_console loaded?)", name, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawFD is a blocking descriptor, outside Go's poller: on a virtio port,
// read() returns 0 while the host is away, and the poller would see
// that as readiness and spin.
type rawFD int

func (f rawFD) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes all of b. It blocks while the host is away; the answer
// then reaches the next host, which skips it by its id.
func (f rawFD) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(int(f), b[done:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// applyIdentity makes this machine the one id describes, in an order that
// leaves no window with old secrets under a new name: the clock first (so
// nothing after logs the snapshot's time), the random generator before
// anything could draw from it, and the SSH keys last, once the address
// they are reached at is in place.
func applyIdentity(srv *Server, id Identity) error {
	if !id.Time.IsZero() {
		ts := unix.NsecToTimespec(id.Time.UnixNano())
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return fmt.Errorf("clock: %w", err)
		}
	}
	if len(id.Seed) > 0 {
		if err := reseed(id.Seed); err != nil {
			return fmt.Errorf("rng: %w", err)
		}
	}
	if id.Hostname != "" {
		if err := unix.Sethostname([]byte(id.Hostname)); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
		if _, err := os.Stat(hostnameFile); err == nil {
			if err := replaceFile(hostnameFile, []byte(id.Hostname+"\n"), 0o644); err != nil {
				return fmt.Errorf("hostname: %w", err)
			}
		}
	}
	if id.MachineID != "" {
		if err := replaceFile(machineIDFile, []byte(id.MachineID+"\n"), 0o444); err != nil {
			return fmt.Errorf("machine id: %w", err)
		}
	}
	if id.MAC != nil || id.Address.IsValid() {
		if err := renumber(id); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	if id.Proxy != nil {
		if err := applyProxy(srv, *id.Proxy); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	if id.HostKey != nil || id.AuthorizedKeys != nil {
		if id.HostKey == nil || id.AuthorizedKeys == nil {
			return errors.New("ssh: send the host key and the authorized keys together")
		}
		if err := srv.SetKeys(id.HostKey, id.AuthorizedKeys); err != nil {
			return fmt.Errorf("ssh: %w", err)
		}
	}
	return nil
}

// reseed credits seed to the kernel's entropy pool and has the CRNG
// reseed from it at once, so clones of one snapshot, which share the
// generator's state, read different bytes from the next call on.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	runtime.KeepAlive(info)
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// renumber gives eth0 the new MAC and then the new address, route and
// name servers, announcing the pair once.
func renumber(id Identity) error {
	link, err := netlink.LinkByName(netDevice)
	if err != nil {
		return err
	}
	if id.MAC != nil {
		if err := netlink.LinkSetHardwareAddr(link, id.MAC); err != nil {
			return fmt.Errorf("mac %s: %w", id.MAC, err)
		}
		// The announcement must carry the new address.
		if link, err = netlink.LinkByIndex(link.Attrs().Index); err != nil {
			return err
		}
	}
	if !id.Address.IsValid() {
		return nil
	}
	return addressLink(link, id.Address, id.Gateway, id.DNS)
}

// proxyProfile has login shells (the console, smolvm ssh) take the HTTP
// proxy that commands get.
const proxyProfile = "/etc/profile.d/smolvm-proxy.sh"

// applyProxy gives commands from now on proxy's environment (ProxyEnv;
// none for the zero AddrPort), and login shells too.
func applyProxy(srv *Server, proxy netip.AddrPort) error {
	env := ProxyEnv(proxy)
	srv.bootEnv.Store(&env)
	if env == nil {
		if err := os.Remove(proxyProfile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shell.Quote(env[k]))
	}
	os.MkdirAll(filepath.Dir(proxyProfile), 0o755)
	return replaceFile(proxyProfile, []byte(b.String()), 0o644)
}
