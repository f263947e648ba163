package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/flock"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/statedir"
	"github.com/smolvm/smolvm/internal/store"
)

// ErrInUse: something still depends on it (a snapshot that VMs were made
// from).
var ErrInUse = errors.New("in use")

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Name      string    `json:"name"`
	SourceVM  string    `json:"source_vm"`
	CreatedAt time.Time `json:"created_at"`
	// DiskOnly snapshots hold the disk alone: VMs made from them boot.
	DiskOnly  bool   `json:"disk_only,omitempty"`
	Image     string `json:"image,omitempty"`
	Kernel    string `json:"kernel"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskMiB   int    `json:"disk_mib"`
	// SizeBytes is what the snapshot's files take on disk.
	SizeBytes int64 `json:"size_bytes"`
	// Paused is how long the source VM was paused for the capture.
	Paused time.Duration `json:"paused_ns"`
	// Dependents are the VMs made from it (their disks build on its disk).
	Dependents []string `json:"dependents"`
	// Auto snapshots were made by Fork, and go with their last VM.
	Auto bool   `json:"auto,omitempty"`
	Dir  string `json:"dir"`
}

// snapshotRecord is what the state database keeps of a snapshot.
type snapshotRecord struct {
	ID         string            `json:"id"` // random; names the RAM clones share
	Config     VMConfig          `json:"config"`
	Kernel     string            `json:"kernel"`
	BaseInitrd string            `json:"base_initrd"`
	BootArgs   string            `json:"boot_args"`
	Cmdline    string            `json:"cmdline"`
	Backend    string            `json:"backend"`
	Host       hostPrint         `json:"host"`
	DiskOnly   bool              `json:"disk_only,omitempty"`
	Paused     int64             `json:"paused_ns"`
	Memory     bool              `json:"memory"` // RAM in its own file (else in the state stream)
	Auto       bool              `json:"auto,omitempty"`
	Network    string            `json:"network"`
	Env        map[string]string `json:"env,omitempty"`
}

// hostPrint is what a memory snapshot needs to be the same when it is
// restored: the QEMU binary and the guest kernel (the device model and the
// memory image must match), and the machine.
type hostPrint struct {
	QEMU    string `json:"qemu"`
	Kernel  string `json:"kernel"`
	Backend string `json:"backend"`
}

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return path + ":missing"
	}
	return fmt.Sprintf("%s:%d:%d", path, fi.Size(), fi.ModTime().UnixNano())
}

func currentHostPrint(backend hypervisor.Backend, kernel string) hostPrint {
	p := hostPrint{Kernel: fileStamp(kernel), Backend: backend.Name()}
	if q, ok := backend.(*qemu.QEMU); ok {
		p.QEMU = fileStamp(q.Binary)
	}
	return p
}

// mismatch says why a snapshot taken on host a cannot be restored on b.
func (a hostPrint) mismatch(b hostPrint) string {
	switch {
	case a.QEMU != b.QEMU:
		return fmt.Sprintf("the QEMU binary changed since (%s, now %s)", a.QEMU, b.QEMU)
	case a.Kernel != b.Kernel:
		return fmt.Sprintf("the guest kernel changed since (%s, now %s)", a.Kernel, b.Kernel)
	case a.Backend != b.Backend:
		return fmt.Sprintf("it was taken with %s, this host runs %s", a.Backend, b.Backend)
	}
	return ""
}

// snapshot files, inside snapshots/<name>/.
func snapshotsDir(home string) string      { return filepath.Join(home, "snapshots") }
func snapshotDir(home, name string) string { return filepath.Join(snapshotsDir(home), name) }
func snapshotFile(dir, file string) string { return filepath.Join(dir, file) }
func snapshotState(dir string) string      { return snapshotFile(dir, "state") }
func snapshotMemory(dir string) string     { return snapshotFile(dir, "memory") }
func snapshotDisk(dir string) string       { return snapshotFile(dir, "disk.raw") }
func snapshotInitrd(dir string) string     { return snapshotFile(dir, "initrd.cpio") }
func snapshotLock(home, name string) string {
	return filepath.Join(snapshotsDir(home), "."+name+".lock")
}
func snapshotTmp(home, name string) string { return filepath.Join(snapshotsDir(home), ".tmp-"+name) }

// SnapshotOption adjusts Snapshot.
type SnapshotOption func(*snapshotOptions)

type snapshotOptions struct {
	diskOnly bool
	auto     bool
}

// DiskOnly captures the disk alone; VMs made from the snapshot boot.
func DiskOnly() SnapshotOption { return func(o *snapshotOptions) { o.diskOnly = true } }

// Snapshot captures the running (or paused) VM under name: its memory,
// device state and disk, or with DiskOnly its disk alone. The VM is
// paused only for the capture (SnapshotInfo.Paused says how long) and
// runs on as it was. A snapshot interrupted half-way leaves nothing.
func (v *VM) Snapshot(ctx context.Context, name string, opts ...SnapshotOption) (*SnapshotInfo, error) {
	var o snapshotOptions
	for _, opt := range opts {
		opt(&o)
	}
	info, err := v.snapshot(ctx, name, o)
	return info, opError("snapshot", v.id, err)
}

// checkSnapshotName refuses a name that is no snapshot's, before any
// path is made from it: names reach here from API paths and MCP tools,
// and "../../x" would put a snapshot's lock file outside the state
// directory.
func checkSnapshotName(name string) error {
	if !idPattern.MatchString(name) {
		return &ValidationError{Field: "snapshot name", Value: fmt.Sprintf("%q", name), Reason: "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"}
	}
	return nil
}

func (v *VM) snapshot(ctx context.Context, name string, o snapshotOptions) (*SnapshotInfo, error) {
	if err := checkSnapshotName(name); err != nil {
		return nil, err
	}
	unlock, err := v.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := v.Refresh(ctx); err != nil {
		return nil, err
	}
	info, rt := v.Info(), v.runtime()
	if info.State != StateRunning && info.State != StatePaused {
		return nil, fmt.Errorf("%w (state %s): a snapshot is taken of a running VM; start it first (smolvm start %s)", ErrNotRunning, info.State, v.id)
	}
	if len(info.Config.Mounts) > 0 {
		return nil, &ValidationError{Field: "snapshot", Value: v.id, Reason: "a VM with host folder mounts cannot be snapshotted (QEMU cannot migrate a mounted 9p share)"}
	}
	if !o.diskOnly {
		if err := v.refuseSecrets("a memory snapshot (and a fork, which takes one)"); err != nil {
			return nil, err
		}
	}
	if rt.BaseInitrd == "" || rt.Cmdline == "" || rt.BootInitrd == "" {
		return nil, &ValidationError{Field: "snapshot", Value: v.id, Reason: "this VM was made by an older smolvm; restart it (smolvm stop, smolvm start) first"}
	}
	backend, err := newBackend()
	if err != nil {
		return nil, err
	}
	snap, ok := backend.(hypervisor.Snapshotter)
	if !ok || !backend.Capabilities().Snapshot {
		return nil, fmt.Errorf("%w: the %s backend cannot take memory snapshots", ErrInvalid, backend.Name())
	}
	st := v.st
	if _, err := st.GetSnapshot(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: a snapshot %q exists; pick another name, or remove it (smolvm snapshot rm %s)", ErrAlreadyExists, name, name)
	}

	home := v.s.home
	if err := statedir.MkdirAll(home, snapshotsDir(home)); err != nil {
		return nil, err
	}
	// The files are made under a temporary name, held by a lock, and
	// renamed in before the row is written: a capture killed half-way
	// leaves a directory nobody holds, which the next snapshot removes.
	unlockSnap, err := flock.Lock(ctx, snapshotLock(home, name), statedir.FileMode)
	if err != nil {
		return nil, err
	}
	defer unlockSnap()
	removeStaleSnapshotTemps(home)
	tmp := snapshotTmp(home, name)
	os.RemoveAll(tmp)
	if err := statedir.MkdirAll(home, tmp); err != nil {
		return nil, err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()

	rec := snapshotRecord{
		ID: newInstance(), Config: info.Config, Kernel: rt.Kernel, BaseInitrd: rt.BaseInitrd, BootArgs: rt.BootArgs,
		Cmdline: rt.Cmdline, Backend: backend.Name(), Host: currentHostPrint(backend, rt.Kernel),
		DiskOnly: o.diskOnly, Auto: o.auto, Network: info.Network.Mode, Env: info.Config.Env,
	}
	diskPath := v.diskPath()
	doneCapture, err := v.markCapture(ctx, info.State)
	if err != nil {
		return nil, err
	}
	defer doneCapture()
	if o.diskOnly {
		began := time.Now()
		if err := v.pauseFor(ctx, func() error { return qemuImgConvert(ctx, diskPath, rt.DiskBase, snapshotDisk(tmp)) }); err != nil {
			return nil, err
		}
		rec.Paused = int64(time.Since(began))
	} else {
		// Paused from here until the disk is copied too, so disk and
		// memory agree.
		began := time.Now()
		files, err := snap.Snapshot(ctx, v.process(), v.paths.qmp(),
			hypervisor.SnapshotFiles{State: snapshotState(tmp), Memory: snapshotMemory(tmp)})
		if err == nil {
			err = qemuImgConvert(ctx, diskPath, rt.DiskBase, snapshotDisk(tmp))
		}
		if info.State != StatePaused {
			if cerr := v.cont(ctx); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return nil, err
		}
		rec.Paused, rec.Memory = int64(time.Since(began)), files.Memory != ""
		if err := copyFile(rt.BootInitrd, snapshotInitrd(tmp)); err != nil {
			return nil, err
		}
	}
	// Read-only from now on, and root's: clones get them as descriptors
	// opened here, or copies of their own.
	for _, f := range []string{snapshotDisk(tmp), snapshotMemory(tmp), snapshotInitrd(tmp), snapshotState(tmp)} {
		os.Chmod(f, 0o400)
	}
	meta, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	dir := snapshotDir(home, name)
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	if err := st.CreateSnapshot(ctx, store.Snapshot{Name: name, SourceVM: v.id, Meta: meta}); err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("%w: a snapshot %q exists", ErrAlreadyExists, name)
		}
		return nil, err
	}
	done = true
	v.log().Info("snapshot", "name", name, "paused", time.Duration(rec.Paused).Round(time.Millisecond), "disk_only", o.diskOnly)
	return getSnapshot(ctx, v.s, st, name)
}

// capturing exists while a capture holds the VM paused; it holds the
// state the VM is to be in after it ("running" or "paused").
func (p paths) capturing() string { return filepath.Join(p.dir, "capturing") }

// markCapture marks the VM as paused by a capture until done is called,
// so that a capture killed in between is undone by the next look
// (reconcile) or the next capture. v's lock is held.
func (v *VM) markCapture(ctx context.Context, state VMState) (done func(), err error) {
	if err := v.recoverCapture(ctx); err != nil {
		return nil, err
	}
	if err := os.WriteFile(v.paths.capturing(), []byte(state), statedir.FileMode); err != nil {
		return nil, err
	}
	return func() { os.Remove(v.paths.capturing()) }, nil
}

// recoverCapture undoes what a capture killed half-way left, if one did:
// QEMU goes on with the migration its client died in, and stops the VM
// again when it ends, so the migration is cancelled before the VM is let
// run (if it ran before the capture). v's lock is held, or free.
func (v *VM) recoverCapture(ctx context.Context) error {
	b, err := os.ReadFile(v.paths.capturing())
	if err != nil {
		return nil
	}
	v.log().Warn("undoing an interrupted snapshot", "state", string(b))
	q, err := qemu.DialQMP(context.WithoutCancel(ctx), v.paths.qmp())
	if err != nil {
		return fmt.Errorf("undo an interrupted snapshot: %w", err)
	}
	defer q.Close()
	q.Execute("migrate_cancel", nil)
	for deadline := time.Now().Add(10 * time.Second); ; {
		raw, err := q.Execute("query-migrate", nil)
		if err != nil {
			return fmt.Errorf("undo an interrupted snapshot: %w", err)
		}
		var m struct {
			Status string `json:"status"`
		}
		json.Unmarshal(raw, &m)
		if m.Status == "" || m.Status == "none" || m.Status == "completed" || m.Status == "failed" || m.Status == "cancelled" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("undo an interrupted snapshot: its migration is still %s", m.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if VMState(b) != StatePaused {
		// A migration that was still ending may stop the VM once more:
		// continue until QEMU says it runs.
		for deadline := time.Now().Add(5 * time.Second); ; {
			if _, err := q.Execute("cont", nil); err != nil {
				return fmt.Errorf("undo an interrupted snapshot: %w", err)
			}
			raw, err := q.Execute("query-status", nil)
			if err != nil {
				return fmt.Errorf("undo an interrupted snapshot: %w", err)
			}
			var st struct {
				Running bool `json:"running"`
			}
			json.Unmarshal(raw, &st)
			if st.Running {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("undo an interrupted snapshot: the VM does not run again (%s)", raw)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return os.Remove(v.paths.capturing())
}

// cont lets a VM stopped for a capture run again.
func (v *VM) cont(ctx context.Context) error {
	q, err := qemu.DialQMP(context.WithoutCancel(ctx), v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	_, err = q.Execute("cont", nil)
	return err
}

// pauseFor runs fn with the VM paused (its disk then holds still).
func (v *VM) pauseFor(ctx context.Context, fn func() error) error {
	if v.Info().State == StatePaused {
		return fn()
	}
	q, err := qemu.DialQMP(ctx, v.paths.qmp())
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := q.Execute("stop", nil); err != nil {
		return err
	}
	defer q.Execute("cont", nil)
	return fn()
}

// removeStaleSnapshotTemps removes what killed captures left.
func removeStaleSnapshotTemps(home string) {
	ents, _ := os.ReadDir(snapshotsDir(home))
	for _, e := range ents {
		name, ok := strings.CutPrefix(e.Name(), ".tmp-")
		if ok && !flock.Held(snapshotLock(home, name)) {
			os.RemoveAll(filepath.Join(snapshotsDir(home), e.Name()))
		}
	}
}

// qemuImgConvert writes disk (raw, or a qcow2 overlay on base) as one
// sparse raw image.
func qemuImgConvert(ctx context.Context, disk, base, out string) error {
	if base == "" {
		return copyFile(disk, out)
	}
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", "-f", "qcow2", disk, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// newOverlay makes a qcow2 disk that reads base and writes only its own
// changes: constant time and space whatever base's size.
func newOverlay(ctx context.Context, base, out string) error {
	cmd := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("qemu-img is needed for snapshot clones: apt-get install qemu-utils")
		}
		return fmt.Errorf("qemu-img create: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return os.Chmod(out, statedir.FileMode)
}

// copyFile copies src to dst sparsely.
func copyFile(src, dst string) error {
	cmd := exec.Command("cp", "--sparse=always", "--", src, dst)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// ListSnapshots returns every snapshot of the state directory.
func ListSnapshots(ctx context.Context, opts ...Option) ([]SnapshotInfo, error) {
	s := newSettings(opts)
	st, err := openStore(ctx, s)
	if err != nil {
		return nil, opError("list snapshots", "", err)
	}
	defer st.Close()
	rows, err := st.ListSnapshots(ctx)
	if err != nil {
		return nil, opError("list snapshots", "", err)
	}
	deps, err := dependents(ctx, st)
	if err != nil {
		return nil, opError("list snapshots", "", err)
	}
	out := make([]SnapshotInfo, 0, len(rows))
	for _, row := range rows {
		info, err := snapshotInfo(s, row, deps[row.Name])
		if err != nil {
			return nil, opError("list snapshots", "", err)
		}
		out = append(out, *info)
	}
	return out, nil
}

// GetSnapshot describes the snapshot called name.
func GetSnapshot(ctx context.Context, name string, opts ...Option) (*SnapshotInfo, error) {
	s := newSettings(opts)
	st, err := openStore(ctx, s)
	if err != nil {
		return nil, opError("snapshot", "", err)
	}
	defer st.Close()
	info, err := getSnapshot(ctx, s, st, name)
	return info, opError("snapshot", "", err)
}

func getSnapshot(ctx context.Context, s settings, st *store.Store, name string) (*SnapshotInfo, error) {
	if err := checkSnapshotName(name); err != nil {
		return nil, err
	}
	row, err := st.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no snapshot %q (smolvm snapshot list shows them)", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	deps, err := dependents(ctx, st)
	if err != nil {
		return nil, err
	}
	return snapshotInfo(s, row, deps[name])
}

func snapshotInfo(s settings, row store.Snapshot, deps []string) (*SnapshotInfo, error) {
	var rec snapshotRecord
	if err := json.Unmarshal(row.Meta, &rec); err != nil {
		return nil, fmt.Errorf("snapshot %q: stored record: %w", row.Name, err)
	}
	dir := snapshotDir(s.home, row.Name)
	info := &SnapshotInfo{
		Name: row.Name, SourceVM: row.SourceVM, CreatedAt: row.CreatedAt, DiskOnly: rec.DiskOnly,
		Image: rec.Config.Image, Kernel: rec.Kernel, VCPUs: rec.Config.VCPUs, MemoryMiB: rec.Config.MemoryMiB,
		DiskMiB: rec.Config.DiskMiB, Paused: time.Duration(rec.Paused), Dependents: deps, Auto: rec.Auto, Dir: dir,
	}
	if info.Dependents == nil {
		info.Dependents = []string{}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				info.SizeBytes += st.Blocks * 512
			}
		}
	}
	return info, nil
}

// dependents maps each snapshot to the VMs made from it.
func dependents(ctx context.Context, st *store.Store) (map[string][]string, error) {
	rows, err := st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, row := range rows {
		var rt runtimeRecord
		if json.Unmarshal(row.Runtime, &rt) == nil && rt.FromSnapshot != "" {
			out[rt.FromSnapshot] = append(out[rt.FromSnapshot], row.ID)
		}
	}
	return out, nil
}

// RemoveSnapshot removes a snapshot and its files. It is refused, with an
// error matching ErrInUse, while VMs made from it exist: their disks build
// on the snapshot's.
func RemoveSnapshot(ctx context.Context, name string, opts ...Option) error {
	s := newSettings(opts)
	st, err := openStore(ctx, s)
	if err != nil {
		return opError("remove snapshot", "", err)
	}
	defer st.Close()
	return opError("remove snapshot", "", removeSnapshot(ctx, s, st, name))
}

func removeSnapshot(ctx context.Context, s settings, st *store.Store, name string) error {
	if err := checkSnapshotName(name); err != nil {
		return err
	}
	// The lock lives in snapshots/, which a fresh state directory lacks.
	if err := statedir.MkdirAll(s.home, snapshotsDir(s.home)); err != nil {
		return err
	}
	unlock, err := flock.Lock(ctx, snapshotLock(s.home, name), statedir.FileMode)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := st.GetSnapshot(ctx, name); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: no snapshot %q (smolvm snapshot list shows them)", ErrNotFound, name)
	} else if err != nil {
		return err
	}
	deps, err := dependents(ctx, st)
	if err != nil {
		return err
	}
	if d := deps[name]; len(d) > 0 {
		return fmt.Errorf("%w: VMs made from snapshot %q still use it (%s): delete them first", ErrInUse, name, strings.Join(d, ", "))
	}
	if err := st.DeleteSnapshot(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return os.RemoveAll(snapshotDir(s.home, name))
}
