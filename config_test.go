package smolvm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/initramfs"
)

// TestValidateLimits checks zero, negative and too-big sizes against a
// made-up host; nothing boots.
func TestValidateLimits(t *testing.T) {
	host := hostLimits{cpus: 2, memoryMiB: 4096, dir: "/state", freeMiB: 10000}
	tests := []struct {
		name string
		cfg  VMConfig
		want string // "" = valid
	}{
		{"zero is the default", VMConfig{}, ""},
		{"at the host's limits", VMConfig{VCPUs: 2, MemoryMiB: 4096, DiskMiB: 10000}, ""},
		{"negative cpus", VMConfig{VCPUs: -1}, "invalid vcpus -1: must not be negative; 0 means the default, 1"},
		{"cpus above the host's", VMConfig{VCPUs: 3}, "invalid vcpus 3: this host has 2 CPUs"},
		{"cpus far above the host's", VMConfig{VCPUs: 65}, "this host has 2 CPUs"},
		{"negative memory", VMConfig{MemoryMiB: -512}, "invalid memory -512 MiB: must not be negative; 0 means the default, 512 MiB"},
		{"tiny memory", VMConfig{MemoryMiB: 16}, "must be at least 128 MiB"},
		{"memory far above the host's RAM", VMConfig{MemoryMiB: 1 << 30}, "this host has 4096 MiB of RAM"},
		{"memory above the host's RAM", VMConfig{MemoryMiB: 4097}, "invalid memory 4097 MiB: this host has 4096 MiB of RAM"},
		{"negative disk", VMConfig{DiskMiB: -1}, "invalid disk -1 MiB: must not be negative; 0 means the default"},
		{"tiny disk", VMConfig{DiskMiB: 8}, "must be at least 64 MiB"},
		{"disk above free space", VMConfig{DiskMiB: 10001}, "invalid disk 10001 MiB: only 10000 MiB are free on the filesystem of /state"},
		{"negative boot timeout", VMConfig{BootTimeout: -time.Second}, "invalid boot timeout -1s: must not be negative; 0 means the default, 1m0s"},
		{"bad env name", VMConfig{Env: map[string]string{"1X": "a"}}, `invalid env name "1X"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.validate(host)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want a *ValidationError mentioning %q", err, tt.want)
			}
		})
	}
	if err := (VMConfig{VCPUs: 65}).validate(hostLimits{cpus: 128, freeMiB: -1}); err == nil || !strings.Contains(err.Error(), "must be between 1 and 64") {
		t.Errorf("65 vCPUs on a big host: %v", err)
	}
	// Unknown host facts are not checked.
	if err := (VMConfig{VCPUs: 64, MemoryMiB: MaxMemoryMiB, DiskMiB: MaxDiskMiB}).validate(hostLimits{freeMiB: -1}); err != nil {
		t.Errorf("unknown host: %v", err)
	}
}

// TestCreateRefusesMoreThanTheHostHas goes through NewFromConfig with this
// host's real limits: each is refused before anything is made.
func TestCreateRefusesMoreThanTheHostHas(t *testing.T) {
	home := t.TempDir()
	host := probeHost(home)
	if host.cpus == 0 || host.memoryMiB == 0 || host.freeMiB < 0 {
		t.Fatalf("probeHost(%s) = %+v: cannot read this host's limits", home, host)
	}
	ctx := context.Background()
	tests := []struct {
		cfg  VMConfig
		want string
	}{
		{VMConfig{VCPUs: host.cpus + 1}, "this host has"},
		{VMConfig{MemoryMiB: host.memoryMiB + 1}, "MiB of RAM"},
		{VMConfig{DiskMiB: int(min(host.freeMiB+1, MaxDiskMiB))}, "free on the filesystem of " + home},
	}
	for _, tt := range tests {
		if tt.cfg.DiskMiB == MaxDiskMiB {
			continue // more free space than any disk may have
		}
		if tt.cfg.VCPUs > MaxVCPUs || tt.cfg.MemoryMiB > MaxMemoryMiB {
			continue
		}
		if err := tt.cfg.Validate(WithHome(home)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalid mentioning %q", tt.cfg, err, tt.want)
		}
		vm, err := NewFromConfig(ctx, tt.cfg, WithHome(home))
		if err == nil {
			vm.Delete(ctx)
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewFromConfig(%+v) = %v, want ErrInvalid mentioning %q", tt.cfg, err, tt.want)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "vms")); len(ents) != 0 {
		t.Errorf("refused creates left VM directories: %v", ents)
	}
}

func TestValidateEnvName(t *testing.T) {
	for name, ok := range map[string]bool{
		"A": true, "_": true, "a_1": true, "PATH": true,
		"": false, "1A": false, "A-B": false, "A B": false, "A=B": false, "Ä": false, "A\n": false,
	} {
		err := ValidateEnvName(name)
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("ValidateEnvName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}

// TestBadInputBeforeTheGuest checks that the SDK's own calls refuse bad
// input before they need a VM at all.
func TestBadInputBeforeTheGuest(t *testing.T) {
	ctx := context.Background()
	v := &VM{id: "x"}
	checks := map[string]error{
		"exec negative timeout": func() error { _, err := v.Exec(ctx, "true", ExecOptions{Timeout: -time.Second}); return err }(),
		"exec bad env name": func() error {
			_, err := v.Exec(ctx, "true", ExecOptions{Env: map[string]string{"A-B": "1"}})
			return err
		}(),
		"setenv bad name":       func() error { _, err := v.SetEnv(ctx, map[string]string{"1A": "1"}); return err }(),
		"setenv NUL in a value": func() error { _, err := v.SetEnv(ctx, map[string]string{"B": "x\x00y"}); return err }(),
		"exec NUL in a value": func() error {
			_, err := v.Exec(ctx, "true", ExecOptions{Env: map[string]string{"B": "x\x00y"}})
			return err
		}(),
		"unsetenv bad name":     func() error { _, err := v.UnsetEnv(ctx, "A B"); return err }(),
		"stop negative timeout": v.Stop(ctx, -time.Second),
	}
	for name, err := range checks {
		var ve *ValidationError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) {
			t.Errorf("%s: got %v, want a *ValidationError", name, err)
		}
	}
}

// TestWriteEnvArchive checks that a rewrite keeps everything before the
// env archive and replaces only it, however often it runs.
func TestWriteEnvArchive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "initrd.cpio")
	var head bytes.Buffer
	if err := initramfs.Write(&head, []initramfs.File{{Name: "init", Mode: 0o755, Data: []byte("agent")}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, head.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	at := int64(head.Len())
	for _, env := range []map[string]string{{"A": "1", "B": "2"}, {"A": "2"}, nil} {
		if err := writeEnvArchive(path, at, env); err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		want.Write(head.Bytes())
		initramfs.Write(&want, []initramfs.File{envFile(env)})
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("env %v: initramfs is not the head plus one env archive", env)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}
