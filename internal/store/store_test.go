package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "smolvm.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestVMRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if err := s.CreateVM(ctx, VM{ID: "a", State: "created", Config: []byte(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVM(ctx, VM{ID: "a", State: "created", Config: []byte(`{}`)}); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	if _, err := s.UpdateVM(ctx, "a", func(vm *VM) error { vm.State, vm.PID = "running", 42; return nil }); err != nil {
		t.Fatal(err)
	}
	vm, err := s.GetVM(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "running" || vm.PID != 42 || string(vm.Config) != `{"x":1}` {
		t.Fatalf("got %+v", vm)
	}
	if err := s.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get":    func() error { _, err := s.GetVM(ctx, "a"); return err }(),
		"update": func() error { _, err := s.UpdateVM(ctx, "a", func(*VM) error { return nil }); return err }(),
		"delete": s.DeleteVM(ctx, "a"),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s after delete: got %v, want ErrNotFound", name, err)
		}
	}
}

// TestLeaseConcurrentHandles leases from several independent handles on one
// file at once, as separate processes would, and checks no index is shared.
func TestLeaseConcurrentHandles(t *testing.T) {
	ctx := context.Background()
	_, path := openTemp(t)
	const handles, perHandle = 4, 10
	var mu sync.Mutex
	seen := map[int]string{}
	var wg sync.WaitGroup
	for h := range handles {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perHandle {
				id := fmt.Sprintf("vm-%d-%d", h, i)
				if err := s.CreateVM(ctx, VM{ID: id, State: "created", Config: []byte("{}")}); err != nil {
					t.Error(err)
					return
				}
				idx, err := s.LeaseIP(ctx, id, 1000, nil)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if other, ok := seen[idx]; ok {
					t.Errorf("index %d leased to %s and %s", idx, other, id)
				}
				seen[idx] = id
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != handles*perHandle {
		t.Fatalf("got %d leases, want %d", len(seen), handles*perHandle)
	}
}

func TestLeaseReuseAndExhaustion(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	for _, id := range []string{"a", "b", "c"} {
		if err := s.CreateVM(ctx, VM{ID: id, State: "created", Config: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		op, vm  string
		wantIdx int
		wantErr error
	}{
		{"lease", "a", 0, nil},
		{"lease", "b", 2, nil}, // 1 is skipped: in use outside the database
		{"lease", "a", 0, nil}, // already held: same index
		{"lease", "c", 0, ErrPoolExhausted},
		{"delete", "a", 0, nil}, // deleting the VM frees its lease
		{"lease", "c", 0, nil},
	}
	for i, tt := range tests {
		switch tt.op {
		case "lease":
			idx, err := s.LeaseIP(ctx, tt.vm, 3, func(idx int) bool { return idx == 1 })
			if !errors.Is(err, tt.wantErr) || (err == nil && idx != tt.wantIdx) {
				t.Fatalf("step %d lease %s: got %d, %v; want %d, %v", i, tt.vm, idx, err, tt.wantIdx, tt.wantErr)
			}
		case "delete":
			if err := s.DeleteVM(ctx, tt.vm); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestForwards(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	for _, id := range []string{"a", "b"} {
		if err := s.CreateVM(ctx, VM{ID: id, State: "created", Config: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddForward(ctx, Forward{VMID: "a", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddForward(ctx, Forward{VMID: "b", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 81}); !errors.Is(err, ErrExists) {
		t.Fatalf("same host port twice: %v", err)
	}
	if err := s.AddForward(ctx, Forward{VMID: "b", HostAddr: "0.0.0.0", HostPort: 8080, GuestPort: 81}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveForward(ctx, "b", "127.0.0.1", 8080); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing another VM's forward: %v", err)
	}
	if fs, _ := s.Forwards(ctx, ""); len(fs) != 2 {
		t.Fatalf("all forwards: %v", fs)
	}
	if err := s.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if fs, _ := s.Forwards(ctx, "a"); len(fs) != 0 {
		t.Fatalf("forwards outlived their VM: %v", fs)
	}
}
