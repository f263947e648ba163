package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/hypervisor"
)

var _ hypervisor.Snapshotter = (*QEMU)(nil)

// Snapshot implements hypervisor.Snapshotter.
//
// A VM that booted has its RAM in a memfd of its own (share=on): with
// x-ignore-shared the migration stream holds only the device state (tens
// of KiB, milliseconds), and the RAM is copied aside from the memfd while
// the VM is stopped. A VM restored from a snapshot maps that snapshot's RAM
// privately; its RAM is not a file of its own, so it goes into the stream.
func (q *QEMU) Snapshot(ctx context.Context, p hypervisor.Process, control string, to hypervisor.SnapshotFiles) (hypervisor.SnapshotFiles, error) {
	m, err := DialQMP(ctx, control)
	if err != nil {
		return to, err
	}
	defer m.Close()
	memfd := ownMemory(p.PID)
	if memfd == "" {
		to.Memory = ""
	}
	if _, err := m.Execute("stop", nil); err != nil {
		return to, err
	}
	if err := m.setIgnoreShared(memfd != ""); err != nil {
		return to, err
	}
	state, err := os.OpenFile(to.State, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return to, err
	}
	err = m.migrate(ctx, "migrate", state)
	state.Close()
	if err == nil && memfd != "" {
		// Copied while the VM is stopped: nothing writes to its RAM.
		err = sparseCopy(memfd, to.Memory)
	}
	if err != nil {
		return to, fmt.Errorf("snapshot: %w", err)
	}
	return to, nil
}

// ownMemory finds the memfd of a booted VM's RAM among its descriptors;
// "" when its RAM is a snapshot's, mapped privately.
func ownMemory(pid int) string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, _ := os.Readlink(dir + e.Name()); strings.HasPrefix(l, "/memfd:memory-backend-memfd") {
			return dir + e.Name()
		}
	}
	return ""
}

// restore feeds a VM started with -incoming defer its snapshot and lets
// it run.
func restore(ctx context.Context, control string, r hypervisor.SnapshotFiles, exited <-chan struct{}) error {
	m, err := DialQMP(ctx, control)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.setIgnoreShared(r.Memory != ""); err != nil {
		return err
	}
	state, err := os.Open(r.State)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer state.Close()
	if err := m.migrate(ctx, "migrate-incoming", state); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := m.Execute("cont", nil); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

func (m *QMP) setIgnoreShared(on bool) error {
	_, err := m.Execute("migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// migrate runs an outgoing ("migrate") or incoming ("migrate-incoming")
// migration through f, handed to QEMU over the socket (its seccomp filter
// forbids the exec: URIs that would spawn a shell), and waits for it.
func (m *QMP) migrate(ctx context.Context, cmd string, f *os.File) error {
	if err := m.sendFD("smolvm-migration", f); err != nil {
		return err
	}
	if _, err := m.Execute(cmd, map[string]string{"uri": "fd:smolvm-migration"}); err != nil {
		return err
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		ret, err := m.Execute("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%s %s: %s", cmd, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			m.Execute("migrate_cancel", nil)
			return ctx.Err()
		case <-t.C:
		}
	}
}

// sendFD hands f to QEMU under name (QMP getfd, SCM_RIGHTS).
func (m *QMP) sendFD(name string, f *os.File) error {
	_, err := m.call("getfd", map[string]string{"fdname": name}, unix.UnixRights(int(f.Fd())))
	return err
}

// sharedMemory returns a sealed memfd holding the snapshot RAM at path,
// for a clone to map privately. All clones of one snapshot share one: it
// is taken from a running clone when there is one (named by id), else
// filled from the file. Sealed, it cannot be written through any
// descriptor, so a clone that escaped QEMU still cannot change another
// clone's memory.
func sharedMemory(path, id string) (*os.File, error) {
	name := "smolvm-snap:" + id
	if f := findMemfd(name); f != nil {
		return f, nil
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("snapshot memory: %w", err)
	}
	mem := os.NewFile(uintptr(fd), name)
	src, err := os.Open(path)
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("snapshot memory: %w", err)
	}
	defer src.Close()
	if err := copySparse(src, mem); err != nil {
		mem.Close()
		return nil, fmt.Errorf("snapshot memory: %w", err)
	}
	const seals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		mem.Close()
		return nil, fmt.Errorf("snapshot memory: seal: %w", err)
	}
	return mem, nil
}

// findMemfd opens the memfd called name that a running clone holds.
func findMemfd(name string) *os.File {
	want := "/memfd:" + name + " (deleted)"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l == want {
				if f, err := os.Open(filepath.Join(dir, e.Name())); err == nil && sealed(f) {
					return f
				}
			}
		}
	}
	return nil
}

func sealed(f *os.File) bool {
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	return err == nil && seals&unix.F_SEAL_WRITE != 0
}

// sparseCopy copies src to a new file dst, skipping holes.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if err := copySparse(in, out); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// copySparse copies the data extents of in to out at the same offsets and
// gives out in's size: holes stay holes.
func copySparse(in, out *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		// In the kernel where it can (sendfile), through a buffer where not.
		if err := sendfileAt(out, in, data, hole-data); err != nil {
			if _, err := io.CopyBuffer(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data), buf); err != nil {
				return err
			}
		}
		off = hole
	}
	return nil
}

// sendfileAt copies n bytes at off of in to the same offset of out.
func sendfileAt(out, in *os.File, off, n int64) error {
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return err
	}
	for n > 0 {
		o := off
		w, err := unix.Sendfile(int(out.Fd()), int(in.Fd()), &o, int(min(n, 1<<30)))
		if err != nil {
			return err
		}
		if w == 0 {
			return io.ErrUnexpectedEOF
		}
		off, n = off+int64(w), n-int64(w)
	}
	return nil
}
