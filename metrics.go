package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/network"
)

// Metrics is one sample of what a running VM uses. Host-side figures are
// measured outside the guest and cannot be forged by it; Guest is what
// the guest itself reports (its /proc), parsed strictly, and may lie.
type Metrics struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
	// CPU is QEMU's CPU time (all vCPUs and its own threads).
	CPU CPUMetrics `json:"cpu"`
	// Memory is what QEMU holds on the host.
	Memory MemoryMetrics `json:"memory"`
	Disk   DiskMetrics   `json:"disk"`
	// Net is nil in user-mode networking, which has no host device to
	// count on.
	Net *NetMetrics `json:"net,omitempty"`
	// Guest is nil when the guest did not answer in time or answered
	// nonsense; GuestError says which.
	Guest      *GuestMetrics `json:"guest,omitempty"`
	GuestError string        `json:"guest_error,omitempty"`
	Limits     Limits        `json:"limits,omitzero"`
}

// CPUMetrics is the VM's CPU use as the host counts it.
type CPUMetrics struct {
	// TimeNS is the CPU time QEMU has used since it started.
	TimeNS int64 `json:"time_ns"`
	// Usage is how many host CPUs it used on average (0.5 = half of one)
	// since the previous Metrics of this handle, or since QEMU started
	// for a handle's first.
	Usage float64 `json:"usage"`
	// ThrottledNS is the time the CPU quota held it back (with a limit).
	ThrottledNS int64 `json:"throttled_ns,omitempty"`
}

// MemoryMetrics is QEMU's memory on the host, in bytes.
type MemoryMetrics struct {
	RSS int64 `json:"rss"`
	// PSS counts pages shared with other processes (a snapshot's RAM
	// with its other clones) in proportion.
	PSS int64 `json:"pss"`
	// Cgroup is what its cgroup is charged, with a memory limit.
	Cgroup int64 `json:"cgroup,omitempty"`
}

// DiskMetrics are the root disk's counters since QEMU started.
type DiskMetrics struct {
	ReadBytes  int64 `json:"read_bytes"`
	WriteBytes int64 `json:"write_bytes"`
	ReadOps    int64 `json:"read_ops"`
	WriteOps   int64 `json:"write_ops"`
}

// NetMetrics are the TAP device's counters since it was made, from the
// guest's side: Rx is what it received.
type NetMetrics struct {
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	// RxDropped and TxDropped are what the TAP itself dropped (a full
	// queue); what a NetBPS limit drops from the guest is not counted here.
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
}

// GuestMetrics is what the guest says about itself.
type GuestMetrics struct {
	MemTotal     int64   `json:"mem_total"`     // bytes
	MemAvailable int64   `json:"mem_available"` // bytes
	Load1        float64 `json:"load1"`
	Load5        float64 `json:"load5"`
	Load15       float64 `json:"load15"`
}

// guestMetricsTimeout bounds the guest's part of a sample: a guest that
// does not answer costs a stats refresh no more.
const guestMetricsTimeout = 2 * time.Second

// Metrics samples the running VM's use of the host. The host-side
// figures fail only if the VM does not run (ErrNotRunning); the guest's
// own are best effort (see Metrics.Guest).
func (v *VM) Metrics(ctx context.Context) (*Metrics, error) {
	m, err := v.metrics(ctx)
	return m, opError("metrics", v.id, err)
}

func (v *VM) metrics(ctx context.Context) (*Metrics, error) {
	if err := v.Refresh(ctx); err != nil {
		return nil, err
	}
	info := v.Info()
	p := v.process()
	if (info.State != StateRunning && info.State != StatePaused) || !hypervisor.Alive(p, info.Process) {
		return nil, fmt.Errorf("%w (state %s): start it first (smolvm start %s)", ErrNotRunning, info.State, v.id)
	}
	m := &Metrics{ID: v.id, At: time.Now().UTC(), Limits: info.Config.Limits}
	cpu, err := procCPU(p.PID)
	if err != nil {
		return nil, err
	}
	m.CPU.TimeNS = int64(cpu)
	v.mu.Lock()
	prev := v.lastCPU
	v.lastCPU = cpuSample{at: m.At, cpu: cpu, proc: p}
	v.mu.Unlock()
	if prev.proc != p || !m.At.After(prev.at) {
		// First sample of this process on this handle: the average since
		// it started.
		prev = cpuSample{at: v.runtime().StartedAt}
	}
	if wall := m.At.Sub(prev.at); wall > 0 && !prev.at.IsZero() {
		m.CPU.Usage = float64(cpu-prev.cpu) / float64(wall)
	}
	if m.Memory.RSS, m.Memory.PSS, err = procMemory(p.PID); err != nil {
		return nil, err
	}
	if g := v.runtime().Cgroup; g != nil {
		if u, err := g.Usage(); err == nil {
			m.Memory.Cgroup, m.CPU.ThrottledNS = u.MemoryBytes, int64(u.Throttled)
		}
	}
	if err := v.diskMetrics(ctx, m); err != nil {
		return nil, err
	}
	if tap := info.Network.TAP; tap != "" {
		s, err := network.TAPStats(tap)
		if err != nil {
			return nil, err
		}
		// The TAP's transmit is the guest's receive.
		m.Net = &NetMetrics{RxBytes: s.TxBytes, TxBytes: s.RxBytes, RxPackets: s.TxPackets, TxPackets: s.RxPackets, RxDropped: s.TxDropped, TxDropped: s.RxDropped}
	}
	if info.State == StateRunning {
		gctx, cancel := context.WithTimeout(ctx, guestMetricsTimeout)
		m.Guest, err = v.guestMetrics(gctx)
		cancel()
		if err != nil {
			m.Guest, m.GuestError = nil, err.Error()
		}
	} else {
		m.GuestError = "the VM is paused"
	}
	return m, nil
}

// cpuSample is a handle's previous CPU reading, for Usage.
type cpuSample struct {
	at   time.Time
	cpu  time.Duration
	proc hypervisor.Process
}

func (v *VM) diskMetrics(ctx context.Context, m *Metrics) error {
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	s, err := q.RootBlockStats()
	if err != nil {
		return err
	}
	m.Disk = DiskMetrics{ReadBytes: s.ReadBytes, WriteBytes: s.WriteBytes, ReadOps: s.ReadOps, WriteOps: s.WriteOps}
	return nil
}

// procCPU reads the user and system time of pid and its threads.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("%w: its process is gone (%w)", ErrNotRunning, err)
	}
	return parseStatCPU(b)
}

// parseStatCPU takes utime and stime (fields 14 and 15) from a stat line.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("/proc/PID/stat: unexpected format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("/proc/PID/stat: unexpected format")
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture smolvm runs on.
const clockTicks = 100

// procMemory reads pid's resident and proportional set sizes.
func procMemory(pid int) (rss, pss int64, err error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	b, err := os.ReadFile(dir + "smaps_rollup")
	if err != nil {
		return 0, 0, fmt.Errorf("%w: its process is gone (%w)", ErrNotRunning, err)
	}
	kv := parseKB(b)
	return kv["Rss:"], kv["Pss:"], nil
}

// parseKB reads "Key: N kB" lines (host files; the kernel's own).
func parseKB(b []byte) map[string]int64 {
	out := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "kB" {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				out[f[0]] = n << 10
			}
		}
	}
	return out
}

// Bounds on what is read from the guest for its metrics.
const (
	maxGuestProcFile = 16 << 10 // a real /proc/meminfo is ~1.5 KiB
	maxGuestLine     = 128
)

func (v *VM) guestMetrics(ctx context.Context) (*GuestMetrics, error) {
	var meminfo, loadavg []byte
	err := v.withSFTP(ctx, func(c *sftp.Client) error {
		var err error
		if meminfo, err = readGuestProc(c, "/proc/meminfo"); err != nil {
			return err
		}
		loadavg, err = readGuestProc(c, "/proc/loadavg")
		return err
	})
	if err != nil {
		return nil, err
	}
	g, err := parseGuestMeminfo(meminfo)
	if err != nil {
		return nil, err
	}
	if g.Load1, g.Load5, g.Load15, err = parseGuestLoadavg(loadavg); err != nil {
		return nil, err
	}
	return g, nil
}

// readGuestProc reads at most maxGuestProcFile bytes of a guest file; a
// longer one is refused, not cut (a cut file would parse as another).
func readGuestProc(c *sftp.Client, path string) ([]byte, error) {
	f, err := c.Open(path)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxGuestProcFile+1))
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", path, err)
	}
	if len(b) > maxGuestProcFile {
		return nil, fmt.Errorf("guest %s: longer than %d bytes, which no real one is", path, maxGuestProcFile)
	}
	return b, nil
}

// parseGuestMeminfo takes MemTotal and MemAvailable from a guest's
// /proc/meminfo. The guest is root and may have put anything there, so
// every line must look like the kernel's ("Key:   N kB", short), both
// keys must appear once, and the figures must make sense together.
func parseGuestMeminfo(b []byte) (*GuestMetrics, error) {
	if len(b) == 0 {
		return nil, errors.New("guest /proc/meminfo: empty")
	}
	var g GuestMetrics
	seen := map[string]bool{}
	for n, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if len(line) > maxGuestLine {
			return nil, fmt.Errorf("guest /proc/meminfo: line %d is longer than %d bytes", n+1, maxGuestLine)
		}
		key, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("guest /proc/meminfo: line %d: no key", n+1)
		}
		var dst *int64
		switch key {
		case "MemTotal":
			dst = &g.MemTotal
		case "MemAvailable":
			dst = &g.MemAvailable
		default:
			continue
		}
		if seen[key] {
			return nil, fmt.Errorf("guest /proc/meminfo: %s twice", key)
		}
		seen[key] = true
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return nil, fmt.Errorf("guest /proc/meminfo: %s: want \"N kB\"", key)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > 1<<42 { // 4 PiB: no guest has more
			return nil, fmt.Errorf("guest /proc/meminfo: %s: bad value %.20q", key, f[0])
		}
		*dst = kb << 10
	}
	switch {
	case !seen["MemTotal"] || !seen["MemAvailable"]:
		return nil, errors.New("guest /proc/meminfo: no MemTotal or MemAvailable")
	case g.MemAvailable > g.MemTotal:
		return nil, errors.New("guest /proc/meminfo: more memory available than there is")
	}
	return &g, nil
}

// parseGuestLoadavg takes the three load averages of a guest's
// /proc/loadavg ("0.00 0.01 0.05 1/60 123").
func parseGuestLoadavg(b []byte) (l1, l5, l15 float64, err error) {
	s := strings.TrimSuffix(string(b), "\n")
	if len(s) > maxGuestLine || strings.Contains(s, "\n") {
		return 0, 0, 0, errors.New("guest /proc/loadavg: not one short line")
	}
	f := strings.Fields(s)
	if len(f) < 3 {
		return 0, 0, 0, errors.New("guest /proc/loadavg: want three load averages")
	}
	var out [3]float64
	for i := range out {
		x, err := strconv.ParseFloat(f[i], 64)
		if err != nil || x < 0 || x > 1e6 || x != x {
			return 0, 0, 0, fmt.Errorf("guest /proc/loadavg: bad load %.20q", f[i])
		}
		out[i] = x
	}
	return out[0], out[1], out[2], nil
}
