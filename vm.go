// Package smolvm creates and manages SSH-ready Linux microVMs: create one
// in a call, run commands in it, stop it, delete it, or reconnect to it by
// id from another process.
package smolvm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/smolvm/smolvm/internal/cgroup"
	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// VMState is a VM's lifecycle state.
type VMState string

// The states a VM can be in.
const (
	StateCreated VMState = "created" // exists, never started
	StateRunning VMState = "running"
	StatePaused  VMState = "paused"
	StateStopped VMState = "stopped"
	StateError   VMState = "error" // its process died without Stop, or a start failed
	// StateHibernated: paused to disk (Pause with ToDisk); no process.
	StateHibernated VMState = "hibernated"
	// StateDeleted is what a handle reports once its VM was deleted,
	// through it or elsewhere; every method then fails with ErrNotFound.
	StateDeleted VMState = "deleted"
)

// NetworkInfo says how a VM is reached.
type NetworkInfo struct {
	Mode    string `json:"mode"`              // "tap" or "user"
	TAP     string `json:"tap,omitempty"`     // host TAP device
	HostIP  string `json:"host_ip,omitempty"` // host end of the TAP link
	GuestIP string `json:"guest_ip"`          // address inside the guest
	Prefix  int    `json:"prefix_len"`        // length of the guest's subnet prefix
	Gateway string `json:"gateway,omitempty"`
	SSHAddr string `json:"ssh_addr"` // host:port the host reaches SSH at
	// Proxy is, in user-mode networking, the guest's HTTP proxy
	// (address:port in the guest's network): its only way out, under
	// its egress policy. Empty: the VM has no egress.
	Proxy string `json:"proxy,omitempty"`
	Note  string `json:"note,omitempty"`
}

// VMInfo is a snapshot of what smolvm knows about a VM.
type VMInfo struct {
	ID         string      `json:"id"`
	State      VMState     `json:"state"`
	Config     VMConfig    `json:"config"`
	PID        int         `json:"pid,omitempty"`
	Network    NetworkInfo `json:"network"`
	DataDir    string      `json:"data_dir"`
	Disk       string      `json:"disk"`
	ConsoleLog string      `json:"console_log"`
	Kernel     string      `json:"kernel"`
	Backend    string      `json:"backend,omitempty"`
	// Process is the VM process's host-unique name (QEMU's -name guest=...),
	// which also tags its firewall rules.
	Process   string    `json:"process"`
	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Error says why the VM is in StateError.
	Error string `json:"error,omitempty"`
	// FromSnapshot names the snapshot the VM was made from, and BootPath
	// says how its last start went: "cold" (booted) or "snapshot"
	// (resumed from memory).
	FromSnapshot string `json:"from_snapshot,omitempty"`
	BootPath     string `json:"boot_path,omitempty"`
}

// runtimeRecord is the part of a VM's row that smolvm derives at create
// and start time, stored as JSON beside the user's config.
type runtimeRecord struct {
	// Instance is a random token made at create that, with the id, names
	// the VM's host-global resources (see hostName).
	Instance  string      `json:"instance"`
	Network   NetworkInfo `json:"network"`
	Kernel    string      `json:"kernel"`
	Initrd    string      `json:"initrd"`
	BootArgs  string      `json:"boot_args"`
	Backend   string      `json:"backend,omitempty"`
	StartedAt time.Time   `json:"started_at,omitzero"`
	// ProcStart is the VM process's start time (hypervisor.Process.Start),
	// beside the PID in the row, so a reused PID is never taken for it.
	ProcStart uint64 `json:"proc_start,omitempty"`
	Error     string `json:"error,omitempty"`
	// BaseInitrd is the agent initramfs the VM's own was made from, and
	// Cmdline the kernel command line of its last start: a snapshot's
	// clones are started with the same.
	BaseInitrd string `json:"base_initrd,omitempty"`
	Cmdline    string `json:"cmdline,omitempty"`
	BootInitrd string `json:"boot_initrd,omitempty"`
	// FromSnapshot names the snapshot the VM was made from; its disk is
	// then a qcow2 overlay (disk.qcow2) on DiskBase, the snapshot's disk.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	DiskBase     string `json:"disk_base,omitempty"`
	// Restore is the memory snapshot the VM's next start resumes from (its
	// first start), with the initramfs and command line it was taken with.
	Restore        *hypervisor.SnapshotFiles `json:"restore,omitempty"`
	RestoreInitrd  string                    `json:"restore_initrd,omitempty"`
	RestoreCmdline string                    `json:"restore_cmdline,omitempty"`
	RestoreEnv     map[string]string         `json:"restore_env,omitempty"` // the guest's env in the snapshot
	// RestoreSelf: Restore is the VM's own hibernation, not a snapshot of
	// another machine, so it keeps its identity.
	RestoreSelf bool `json:"restore_self,omitempty"`
	// Path says how the VM came to run: "cold" boot, "snapshot" restore.
	Path string `json:"path,omitempty"`
	// EnvAt is where the initramfs's last archive, the copy of
	// VMConfig.Env, begins (see env.go); 0 for VMs made before it had one.
	EnvAt int64 `json:"env_at,omitempty"`
	// Cgroup is the VM's cgroup while it has one (see limits.go).
	Cgroup *cgroup.Group `json:"cgroup,omitempty"`
	// SecretsProc is the ProcStart of the VM process whose guest was
	// given secrets (see secrets.go): while it runs, its memory is not
	// to be captured. Never the secrets themselves.
	SecretsProc uint64 `json:"secrets_proc,omitempty"`
}

// VM is a handle on one VM. Its methods are safe for concurrent use. A
// handle from New owns its VM (With deletes it at the end); one from
// FromID does not.
type VM struct {
	s     settings
	st    *store.Store
	id    string
	paths paths
	owned bool

	mu     sync.Mutex
	info   VMInfo
	rt     runtimeRecord
	client *guest.Client

	lastCPU cpuSample // the previous Metrics' CPU reading; guarded by mu
	keeper  string    // the keeper binary once found (keeperExe); guarded by mu

	closeOnce   sync.Once
	deleted     bool // the VM is gone (see row); guarded by mu
	deletedHere bool // by this handle's Delete; guarded by mu
}

// ID returns the VM's id.
func (v *VM) ID() string { return v.id }

// DataDir returns the directory holding the VM's disk, logs and keys.
func (v *VM) DataDir() string { return v.paths.dir }

// Info returns what smolvm knew at the last call that looked (Refresh,
// Start, Stop...). Call Refresh for the current state.
func (v *VM) Info() VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// Status returns the VM's state as of the last look (see Refresh), except
// that a VM recorded as running or paused whose process is gone is looked
// up again: a VM deleted or killed elsewhere never reads as running.
func (v *VM) Status() VMState {
	info := v.Info()
	if (info.State != StateRunning && info.State != StatePaused) || hypervisor.Alive(v.process(), info.Process) {
		return info.State
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := v.Refresh(ctx); err != nil && !errors.Is(err, ErrNotFound) {
		return StateError // its process is gone and the state cannot be read
	}
	return v.Info().State
}

// IP returns the address at which the host reaches the guest: its own
// address with TAP networking, 127.0.0.1 with user-mode networking (where
// guest ports are reached through forwarded host ports).
func (v *VM) IP() string {
	n := v.Info().Network
	if n.Mode == NetworkUser {
		return "127.0.0.1"
	}
	return n.GuestIP
}

// Owned reports whether this handle created the VM.
func (v *VM) Owned() bool { return v.owned }

// Close releases this handle's connection and database; the VM itself is
// untouched and keeps running. Close is idempotent.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		v.mu.Lock()
		v.dropClient()
		v.mu.Unlock()
		v.st.Close()
	})
	return nil
}

func (v *VM) log() *slog.Logger { return v.s.logger.With("vm", v.id) }

// FromID reconnects to an existing VM, from any process.
func FromID(ctx context.Context, id string, opts ...Option) (*VM, error) {
	s := newSettings(opts)
	st, err := openStore(ctx, s)
	if err != nil {
		return nil, opError("open", id, err)
	}
	v := &VM{s: s, st: st, id: id, paths: newPaths(s.home, id)}
	if err := v.load(ctx); err != nil {
		st.Close()
		return nil, opError("open", id, err)
	}
	if err := v.reconcile(ctx); err != nil {
		st.Close()
		return nil, opError("open", id, err)
	}
	if err := v.expireOnLook(ctx); errors.Is(err, ErrNotFound) {
		st.Close()
		return nil, opError("open", id, err)
	} else if err != nil {
		v.log().Warn("open: ending a VM whose lifetime is over", "err", err)
	}
	v.lookedAt(ctx)
	return v, nil
}

// Refresh reloads the VM's state and reconciles it with its process: a VM
// whose process died is reported as StateError, never as running.
func (v *VM) Refresh(ctx context.Context) error {
	if err := v.load(ctx); err != nil {
		return opError("refresh", v.id, err)
	}
	return opError("refresh", v.id, v.reconcile(ctx))
}

// load reads the row into the handle.
func (v *VM) load(ctx context.Context) error {
	row, err := v.row(ctx)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.setFromRow(row)
}

// exists fails with ErrNotFound once the handle's VM is gone.
func (v *VM) exists(ctx context.Context) error {
	_, err := v.row(ctx)
	return err
}

// row reads the handle's VM from the database. The VM is gone when it
// was deleted through this handle, when its row is missing, or when the
// row is that of a new VM made with the same id since (another instance:
// its keys, disk and process are not this handle's). A gone VM stays gone
// for the handle, which then drops its connection.
func (v *VM) row(ctx context.Context) (store.VM, error) {
	v.mu.Lock()
	deleted, inst := v.deleted, v.rt.Instance
	v.mu.Unlock()
	if deleted {
		return store.VM{}, errDeleted
	}
	row, err := v.st.GetVM(ctx, v.id)
	if errors.Is(err, store.ErrNotFound) && inst == "" { // never seen: FromID of a wrong id
		return row, fmt.Errorf("%w: no VM with this id in %s (smolvm list shows them)", ErrNotFound, v.s.home)
	}
	if errors.Is(err, store.ErrNotFound) {
		v.markDeleted()
		return row, errDeleted
	}
	if err != nil {
		return row, err
	}
	var rt runtimeRecord
	if json.Unmarshal(row.Runtime, &rt) == nil && inst != "" && rt.Instance != inst {
		v.markDeleted()
		return row, errDeleted
	}
	return row, nil
}

var errDeleted = fmt.Errorf("%w: the VM was deleted", ErrNotFound)

// markDeleted records that the VM is gone.
func (v *VM) markDeleted() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.deleted = true
	v.dropClient()
	v.info.State, v.info.PID = StateDeleted, 0
}

func (v *VM) setFromRow(row store.VM) error {
	var cfg VMConfig
	if err := json.Unmarshal(row.Config, &cfg); err != nil {
		return fmt.Errorf("stored config: %w", err)
	}
	var rt runtimeRecord
	if err := json.Unmarshal(row.Runtime, &rt); err != nil {
		return fmt.Errorf("stored runtime: %w", err)
	}
	v.rt = rt
	v.info = VMInfo{
		ID: row.ID, State: VMState(row.State), Config: cfg, PID: row.PID,
		Network: rt.Network, DataDir: v.paths.dir, Disk: v.paths.diskOf(rt),
		ConsoleLog: v.paths.console(), Kernel: rt.Kernel, Backend: rt.Backend, Process: rt.hostName(row.ID),
		FromSnapshot: rt.FromSnapshot, BootPath: rt.Path,
		CreatedAt: row.CreatedAt, StartedAt: rt.StartedAt, Error: rt.Error,
	}
	return nil
}

// update changes the row in one transaction and refreshes the handle.
func (v *VM) update(ctx context.Context, fn func(row *store.VM, rt *runtimeRecord) error) error {
	if err := v.exists(ctx); err != nil {
		return err
	}
	inst := v.runtime().Instance
	row, err := v.st.UpdateVM(ctx, v.id, func(row *store.VM) error {
		var rt runtimeRecord
		if err := json.Unmarshal(row.Runtime, &rt); err != nil {
			return err
		}
		if inst != "" && rt.Instance != inst {
			return errDeleted // the id now names another VM
		}
		if err := fn(row, &rt); err != nil {
			return err
		}
		b, err := json.Marshal(rt)
		row.Runtime = b
		return err
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, errDeleted) {
		v.markDeleted()
		return errDeleted
	}
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.setFromRow(row)
}

// incomplete reports whether create never finished the record: create
// writes the runtime record once, as its last step.
func (rt runtimeRecord) incomplete() bool { return rt.Instance == "" && rt.Kernel == "" }

// process is the VM process as recorded.
func (v *VM) process() hypervisor.Process {
	v.mu.Lock()
	defer v.mu.Unlock()
	return hypervisor.Process{PID: v.info.PID, Start: v.rt.ProcStart}
}

// reconcile makes the row agree with the host: the row says what exists,
// the process whether it runs. A start that was killed before it recorded
// its process (or before it cleaned up) left a QEMU, TAP device or rules
// behind a VM the row calls stopped; nobody holds the VM's lock then, so
// they are removed here: either the VM runs and is recorded, or nothing
// of it runs.
func (v *VM) reconcile(ctx context.Context) error {
	info := v.Info()
	if info.State != StateRunning && info.State != StatePaused {
		if flock.Held(v.paths.lock()) {
			return nil // being created, started, stopped or deleted right now
		}
		// What a capture killed before it ended left: no VM runs paused
		// for it (an orphan QEMU is killed below).
		os.Remove(v.paths.capturing())
		if v.runtime().incomplete() {
			// Its create was killed half-way: what it made goes, as a
			// failed create's undo would have removed it.
			v.log().Warn("removing a VM whose create was interrupted")
			os.RemoveAll(v.paths.dir)
			if err := v.st.DeleteVM(ctx, v.id); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return fmt.Errorf("%w: its create was interrupted, and what it had made is removed", ErrNotFound)
		}
		_, orphan := hypervisor.Find(info.Process)
		if orphan || (info.Network.TAP != "" && network.TAPExists(info.Network.TAP)) {
			v.log().Warn("removing what an interrupted start left", "process", orphan)
			if err := hypervisor.KillByName(ctx, hypervisor.Process{}, info.Process); err != nil {
				return err
			}
			v.releaseRunResources()
		}
		return nil
	}
	if hypervisor.Alive(v.process(), info.Process) {
		if !flock.Held(v.paths.lock()) {
			return v.recoverCapture(ctx) // a capture killed while it held the VM paused
		}
		return nil
	}
	v.log().Warn("VM process is gone", "pid", info.PID)
	v.releaseRunResources()
	return v.update(ctx, func(row *store.VM, rt *runtimeRecord) error {
		if row.State == string(StateRunning) || row.State == string(StatePaused) {
			row.State, row.PID = string(StateError), 0
			rt.Error = "VM process exited unexpectedly; see " + v.paths.console()
		}
		return nil
	})
}

// hostName is the host-unique name of the VM's process, firewall rules and
// (through the instance) TAP device. Two state directories may both have a
// VM "web"; their names differ, so neither can touch the other's resources.
func (rt runtimeRecord) hostName(id string) string {
	inst := rt.Instance
	if inst == "" { // a row made before instances existed
		sum := sha256.Sum256([]byte(id))
		inst = hex.EncodeToString(sum[:5])
	}
	return hypervisor.Name(id, inst)
}

// newInstance makes the random token of a new VM's host-global names.
func newInstance() string {
	b := make([]byte, 5)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// paths owns the on-disk layout of the state directory.
type paths struct {
	home, dir string
}

func newPaths(home, id string) paths {
	return paths{home: home, dir: filepath.Join(home, "vms", id)}
}

func (p paths) disk() string          { return filepath.Join(p.dir, "disk.ext4") }
func (p paths) console() string       { return filepath.Join(p.dir, "console.log") }
func (p paths) consoleOld() string    { return filepath.Join(p.dir, "console.log.1") }
func (p paths) initrd() string        { return filepath.Join(p.dir, "initrd.cpio") }
func (p paths) processLog() string    { return filepath.Join(p.dir, "qemu.log") }
func (p paths) lock() string          { return filepath.Join(p.dir, ".lock") }
func (p paths) agentSocket() string   { return filepath.Join(p.dir, "agent.sock") }
func (p paths) overlay() string       { return filepath.Join(p.dir, "disk.qcow2") }
func (p paths) restoreInitrd() string { return filepath.Join(p.dir, "restore-initrd.cpio") }

// diskPath is the VM's disk: its raw image, or a clone's overlay.
func (v *VM) diskPath() string { return v.paths.diskOf(v.runtime()) }

func (p paths) diskOf(rt runtimeRecord) string {
	if rt.DiskBase != "" {
		return p.overlay()
	}
	return p.disk()
}
func (p paths) qmp() string            { return filepath.Join(p.dir, "qmp.sock") }
func (p paths) hostKey() string        { return filepath.Join(p.dir, "ssh_host_ed25519_key") }
func (p paths) hostKeyPub() string     { return filepath.Join(p.dir, "ssh_host_ed25519_key.pub") }
func (p paths) clientKey() string      { return filepath.Join(p.dir, "id_ed25519") }
func (p paths) clientKeyPub() string   { return filepath.Join(p.dir, "id_ed25519.pub") }
func (p paths) knownHosts() string     { return filepath.Join(p.dir, "known_hosts") }
func openStorePath(home string) string { return filepath.Join(home, "smolvm.db") }

func openStore(ctx context.Context, s settings) (*store.Store, error) {
	return store.Open(ctx, openStorePath(s.home))
}
