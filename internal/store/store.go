// Package store keeps smolvm's state in a SQLite database that several
// processes may use at once: the VMs that exist and the IP leases they hold.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/smolvm/smolvm/internal/statedir"
)

var (
	// ErrNotFound is returned when a VM row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when a VM with the same id already exists.
	ErrExists = errors.New("already exists")
	// ErrPoolExhausted is returned when every IP lease is taken.
	ErrPoolExhausted = errors.New("IP pool exhausted")
)

// VM is one row of the vms table. Config and Runtime are opaque JSON owned
// by the caller, so that the store knows nothing about hypervisors.
type VM struct {
	ID        string
	State     string
	PID       int
	Config    []byte
	Runtime   []byte
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Store is a handle on the database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// migrations are applied in order; a database records how many it has seen.
var migrations = []string{
	`CREATE TABLE vms (
		id         TEXT PRIMARY KEY,
		state      TEXT NOT NULL,
		pid        INTEGER NOT NULL DEFAULT 0,
		config     TEXT NOT NULL,
		runtime    TEXT NOT NULL DEFAULT '{}',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE ip_leases (
		idx   INTEGER PRIMARY KEY,
		vm_id TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE
	);`,
	`CREATE TABLE port_forwards (
		vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		host_addr  TEXT NOT NULL,
		host_port  INTEGER NOT NULL,
		guest_port INTEGER NOT NULL,
		PRIMARY KEY (host_addr, host_port)
	);`,
	`CREATE TABLE snapshots (
		name       TEXT PRIMARY KEY,
		source_vm  TEXT NOT NULL,
		meta       TEXT NOT NULL,
		created_at INTEGER NOT NULL
	);`,
}

// Open opens (creating if needed) the database at path. WAL mode and a busy
// timeout let several processes share it; write transactions take the lock
// up front (BEGIN IMMEDIATE) so read-modify-write sequences never deadlock.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := statedir.Ensure(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// The database holds env values: create it 0600 before SQLite does
	// (it would use 0644 less the umask); SQLite gives its -wal and -shm
	// files the database file's mode. Files of an older smolvm are
	// tightened.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, statedir.FileMode)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := statedir.Tighten(p); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	dsn := "file:" + path + "?_txlock=immediate" +
		"&_pragma=busy_timeout(15000)&_pragma=journal_mode(WAL)" +
		"&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&n); err != nil {
			return err
		}
		for i := n; i < len(migrations); i++ {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		if n < len(migrations) {
			_, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations)))
			return err
		}
		return nil
	})
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// CreateVM inserts a new VM row.
func (s *Store) CreateVM(ctx context.Context, vm VM) error {
	now := time.Now()
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO vms (id, state, pid, config, runtime, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		vm.ID, vm.State, vm.PID, string(vm.Config), orEmptyObject(vm.Runtime), now.UnixNano(), now.UnixNano())
	if err != nil {
		if isUniqueViolation(err) {
			return fmt.Errorf("vm %q: %w", vm.ID, ErrExists)
		}
		return fmt.Errorf("store: create vm %q: %w", vm.ID, err)
	}
	return nil
}

// GetVM returns the row for id.
func (s *Store) GetVM(ctx context.Context, id string) (VM, error) {
	row := s.db.QueryRowContext(ctx, `SELECT id, state, pid, config, runtime, created_at, updated_at FROM vms WHERE id = ?`, id)
	vm, err := scanVM(row)
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return VM{}, fmt.Errorf("store: get vm %q: %w", id, err)
	}
	return vm, nil
}

// ListVMs returns every VM, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, state, pid, config, runtime, created_at, updated_at FROM vms ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list vms: %w", err)
	}
	defer rows.Close()
	var vms []VM
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list vms: %w", err)
		}
		vms = append(vms, vm)
	}
	return vms, rows.Err()
}

// UpdateVM reads the row for id, lets fn change it, and writes it back, all
// in one write transaction so concurrent updaters cannot lose changes.
func (s *Store) UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error) {
	var out VM
	err := s.tx(ctx, func(tx *sql.Tx) error {
		row := tx.QueryRowContext(ctx, `SELECT id, state, pid, config, runtime, created_at, updated_at FROM vms WHERE id = ?`, id)
		vm, err := scanVM(row)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("vm %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if err := fn(&vm); err != nil {
			return err
		}
		vm.UpdatedAt = time.Now()
		_, err = tx.ExecContext(ctx, `UPDATE vms SET state = ?, pid = ?, config = ?, runtime = ?, updated_at = ? WHERE id = ?`,
			vm.State, vm.PID, string(vm.Config), orEmptyObject(vm.Runtime), vm.UpdatedAt.UnixNano(), id)
		out = vm
		return err
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return VM{}, err
		}
		return VM{}, fmt.Errorf("store: update vm %q: %w", id, err)
	}
	return out, nil
}

// DeleteVM removes the row for id and, through the foreign key, its lease.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("store: delete vm %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", id, ErrNotFound)
	}
	return nil
}

// LeaseIP gives vmID the smallest lease index in [0, size) that no VM
// holds and skip (if not nil) does not reject, or the one vmID already
// holds. The write transaction makes two processes leasing at once get
// different indexes; skip lets the caller avoid addresses that something
// outside this database (another state directory) uses right now.
func (s *Store) LeaseIP(ctx context.Context, vmID string, size int, skip func(idx int) bool) (int, error) {
	var idx int
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT idx FROM ip_leases WHERE vm_id = ?`, vmID).Scan(&idx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT idx FROM ip_leases`)
		if err != nil {
			return err
		}
		taken := map[int]bool{}
		for rows.Next() {
			var n int
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return err
			}
			taken[n] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for idx = 0; idx < size; idx++ {
			if !taken[idx] && (skip == nil || !skip(idx)) {
				_, err = tx.ExecContext(ctx, `INSERT INTO ip_leases (idx, vm_id) VALUES (?, ?)`, idx, vmID)
				return err
			}
		}
		return ErrPoolExhausted
	})
	if err != nil {
		return 0, fmt.Errorf("store: lease IP for vm %q: %w", vmID, err)
	}
	return idx, nil
}

// ReleaseIP frees vmID's lease, if it holds one.
func (s *Store) ReleaseIP(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM ip_leases WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("store: release IP of vm %q: %w", vmID, err)
	}
	return nil
}

type scanner interface{ Scan(...any) error }

func scanVM(r scanner) (VM, error) {
	var vm VM
	var config, runtime string
	var created, updated int64
	if err := r.Scan(&vm.ID, &vm.State, &vm.PID, &config, &runtime, &created, &updated); err != nil {
		return VM{}, err
	}
	vm.Config, vm.Runtime = []byte(config), []byte(runtime)
	vm.CreatedAt, vm.UpdatedAt = time.Unix(0, created), time.Unix(0, updated)
	return vm, nil
}

func orEmptyObject(b []byte) string {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

func isUniqueViolation(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
}

// Forward is one port forward: HostAddr:HostPort on the host to GuestPort
// in the VM.
type Forward struct {
	VMID      string
	HostAddr  string
	HostPort  int
	GuestPort int
}

// AddForward records a forward. A host address and port already forwarded
// (to any VM) is ErrExists.
func (s *Store) AddForward(ctx context.Context, f Forward) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO port_forwards (vm_id, host_addr, host_port, guest_port) VALUES (?, ?, ?, ?)`,
		f.VMID, f.HostAddr, f.HostPort, f.GuestPort)
	if isUniqueViolation(err) {
		return fmt.Errorf("port %s:%d: %w", f.HostAddr, f.HostPort, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: add forward: %w", err)
	}
	return nil
}

// RemoveForward deletes vmID's forward of hostAddr:hostPort.
func (s *Store) RemoveForward(ctx context.Context, vmID, hostAddr string, hostPort int) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM port_forwards WHERE vm_id = ? AND host_addr = ? AND host_port = ?`, vmID, hostAddr, hostPort)
	if err != nil {
		return fmt.Errorf("store: remove forward: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("port %s:%d of vm %q: %w", hostAddr, hostPort, vmID, ErrNotFound)
	}
	return nil
}

// Forwards lists vmID's forwards, or every VM's when vmID is empty.
func (s *Store) Forwards(ctx context.Context, vmID string) ([]Forward, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT vm_id, host_addr, host_port, guest_port FROM port_forwards
		WHERE ? = '' OR vm_id = ? ORDER BY host_addr, host_port`, vmID, vmID)
	if err != nil {
		return nil, fmt.Errorf("store: forwards: %w", err)
	}
	defer rows.Close()
	var out []Forward
	for rows.Next() {
		var f Forward
		if err := rows.Scan(&f.VMID, &f.HostAddr, &f.HostPort, &f.GuestPort); err != nil {
			return nil, fmt.Errorf("store: forwards: %w", err)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// Snapshot is one row of the snapshots table; Meta is opaque JSON owned by
// the caller.
type Snapshot struct {
	Name      string
	SourceVM  string
	Meta      []byte
	CreatedAt time.Time
}

// CreateSnapshot inserts a snapshot row; a taken name is ErrExists.
func (s *Store) CreateSnapshot(ctx context.Context, sn Snapshot) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshots (name, source_vm, meta, created_at) VALUES (?, ?, ?, ?)`,
		sn.Name, sn.SourceVM, string(sn.Meta), time.Now().UnixNano())
	if isUniqueViolation(err) {
		return fmt.Errorf("snapshot %q: %w", sn.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create snapshot %q: %w", sn.Name, err)
	}
	return nil
}

// GetSnapshot returns the row for name.
func (s *Store) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	var sn Snapshot
	var meta string
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT name, source_vm, meta, created_at FROM snapshots WHERE name = ?`, name).
		Scan(&sn.Name, &sn.SourceVM, &meta, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return sn, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return sn, fmt.Errorf("store: get snapshot %q: %w", name, err)
	}
	sn.Meta, sn.CreatedAt = []byte(meta), time.Unix(0, created).UTC()
	return sn, nil
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, source_vm, meta, created_at FROM snapshots ORDER BY created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("store: list snapshots: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		var sn Snapshot
		var meta string
		var created int64
		if err := rows.Scan(&sn.Name, &sn.SourceVM, &meta, &created); err != nil {
			return nil, err
		}
		sn.Meta, sn.CreatedAt = []byte(meta), time.Unix(0, created).UTC()
		out = append(out, sn)
	}
	return out, rows.Err()
}

// DeleteSnapshot removes the row for name.
func (s *Store) DeleteSnapshot(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM snapshots WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("store: delete snapshot %q: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	return nil
}
