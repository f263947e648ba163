package network

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/flock"
)

// DefaultForwardingRecord is where the firewall of the host's own network
// namespace notes the forwarding it turned on. It is under /run because
// sysctls do not survive a reboot either; it is one file per host, not per
// state directory, because sysctls and the table are host-wide.
const DefaultForwardingRecord = "/run/smolvm/forwarding.json"

// ForwardingRecord is what smolvm changed in a namespace's IPv4
// forwarding, to put back when its last VM is gone.
type ForwardingRecord struct {
	// Interfaces had net.ipv4.conf.<name>.forwarding off until smolvm
	// turned it on. What arrives on them is forwarded only to smolvm TAPs
	// (a rule in the table), so the host forwards nothing it did not
	// forward before, except a VM's traffic.
	Interfaces []ForwardingChange `json:"interfaces"`
}

// ForwardingChange is one interface whose forwarding smolvm turned on.
type ForwardingChange struct {
	Name     string    `json:"name"`
	Previous string    `json:"previous"` // the value before, "0"
	At       time.Time `json:"at"`
}

// Names lists the interfaces of the record.
func (r ForwardingRecord) Names() []string {
	var out []string
	for _, c := range r.Interfaces {
		out = append(out, c.Name)
	}
	return out
}

// ReadForwardingRecord reads a record file; a missing file is an empty
// record.
func ReadForwardingRecord(path string) (ForwardingRecord, error) {
	var r ForwardingRecord
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("forwarding record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("forwarding record %s: %w", path, err)
	}
	return r, nil
}

func writeForwardingRecord(path string, r ForwardingRecord) error {
	if len(r.Interfaces) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forwarding record: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("forwarding record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("forwarding record: %w", err)
	}
	return nil
}

// lock serializes the table's base and the forwarding record across
// processes: two starts must not both decide forwarding was theirs to
// record, and a stop must not delete the table under a start.
func (f *Firewall) lock() (func(), error) {
	if f.Record == "" {
		return nil, errors.New("firewall: no forwarding record file set (Firewall.Record)")
	}
	if err := os.MkdirAll(filepath.Dir(f.Record), 0o755); err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unlock, err := flock.Lock(ctx, f.Record+".lock", 0o600)
	if err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	return unlock, nil
}

// forwardingKey is the sysctl of an interface's IPv4 forwarding.
func forwardingKey(dev string) string { return "net/ipv4/conf/" + dev + "/forwarding" }

// planForwarding adds to rec the egress interfaces whose forwarding is
// off. The egress interfaces are those of the namespace's IPv4 default
// routes: a VM's traffic leaves, and its replies and forwarded connections
// come back, through them. IPv4 forwarding is decided by the interface a
// packet arrives on, so turning it on there and on each TAP (AddVM) is all
// VMs need; net.ipv4.ip_forward, which turns it on for every interface,
// stays as it is.
func (f *Firewall) planForwarding(rec ForwardingRecord) (ForwardingRecord, []string, error) {
	devs, err := f.egressDevices()
	if err != nil {
		return rec, nil, err
	}
	for _, dev := range devs {
		if slices.Contains(rec.Names(), dev) {
			continue
		}
		cur, err := f.getSysctl(forwardingKey(dev))
		if err != nil {
			return rec, nil, fmt.Errorf("interface %s: %w", dev, err)
		}
		if cur == "0" {
			rec.Interfaces = append(rec.Interfaces, ForwardingChange{Name: dev, Previous: cur, At: time.Now().UTC()})
		}
	}
	return rec, devs, nil
}

// egressDevices lists the interfaces of the IPv4 default routes of the
// main table, never lo or a smol* device.
func (f *Firewall) egressDevices() ([]string, error) {
	h, err := f.netlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var idx []int
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex > 0 {
			idx = append(idx, r.LinkIndex)
		}
		for _, nh := range r.MultiPath {
			idx = append(idx, nh.LinkIndex)
		}
	}
	var out []string
	for _, i := range idx {
		l, err := h.LinkByIndex(i)
		if err != nil {
			continue // gone meanwhile
		}
		name := l.Attrs().Name
		if name == "lo" || strings.HasPrefix(name, tapPrefix) || slices.Contains(out, name) {
			continue
		}
		out = append(out, name)
	}
	return out, nil
}

func (f *Firewall) netlink() (*netlink.Handle, error) {
	if f.netns == 0 {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(netns.NsHandle(f.netns))
}

// restoreForwarding puts back what the record says smolvm changed, where
// the value is still the one smolvm set, and removes the record.
func (f *Firewall) restoreForwarding() error {
	rec, err := ReadForwardingRecord(f.Record)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range rec.Interfaces {
		cur, err := f.getSysctl(forwardingKey(c.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the interface is gone, and its setting with it
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", c.Name, err))
			continue
		}
		if cur != "1" {
			continue // someone else changed it since; theirs now
		}
		if err := f.setSysctl(forwardingKey(c.Name), c.Previous); err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", c.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("firewall: restore forwarding: %w", err)
	}
	return writeForwardingRecord(f.Record, ForwardingRecord{})
}

func (f *Firewall) getSysctl(key string) (string, error) {
	var val string
	err := inNetNS(f.netns, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		val = string(bytes.TrimSpace(b))
		return err
	})
	return val, err
}

// setSysctl writes val to /proc/sys/<key> of the Firewall's namespace,
// unless it already holds val (writing ip_forward resets every device's
// forwarding setting, so an unneeded write is not harmless).
func (f *Firewall) setSysctl(key, val string) error {
	path := "/proc/sys/" + key
	return inNetNS(f.netns, func() error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(cur)) == val {
			return nil
		}
		return os.WriteFile(path, []byte(val), 0o644)
	})
}

// inNetNS runs fn on an OS thread that is in the network namespace open as
// fd (0 = the caller's namespace, where fn runs directly). /proc/sys/net
// shows the namespace of the thread that opens it.
func inNetNS(fd int, fn func() error) error {
	if fd == 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// A thread left in the other namespace is never unlocked, so it
		// ends with this goroutine instead of running other code.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
