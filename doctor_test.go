package smolvm_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/smolvm/smolvm"
)

func TestDoctor(t *testing.T) {
	tmp := t.TempDir()
	notDir := filepath.Join(tmp, "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts []smolvm.Option
		env  map[string]string
		want map[string]bool // check name -> OK
	}{
		{
			// Nothing configured: the first create builds one from this
			// checkout, which doctor reports as fine.
			name: "no agent configured",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(tmp, "home4"))},
			env:  map[string]string{"SMOLVM_AGENT": ""},
			want: map[string]bool{"agent": true},
		},
		{
			name: "no agent configured, no go",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(tmp, "home5"))},
			env:  map[string]string{"SMOLVM_AGENT": "", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GOROOT": "", "XDG_CACHE_HOME": filepath.Join(tmp, "cache5")},
			want: map[string]bool{"agent": false},
		},
		{
			name: "writable home, missing agent",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(tmp, "home")), smolvm.WithAgent(filepath.Join(tmp, "no-agent"))},
			want: map[string]bool{"state dir": true, "agent": false},
		},
		{
			name: "home is a file",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(notDir, "home")), smolvm.WithAgent(notDir)},
			want: map[string]bool{"state dir": false, "agent": false},
		},
		{
			name: "missing local alpine source",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(tmp, "home2")), smolvm.WithAlpineSource(filepath.Join(tmp, "no-such.tar.gz"))},
			want: map[string]bool{"default image": false},
		},
		{
			name: "alpine mirror URL",
			opts: []smolvm.Option{smolvm.WithHome(filepath.Join(tmp, "home3")), smolvm.WithAlpineSource("https://mirror.example/alpine")},
			want: map[string]bool{"default image": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			checks := smolvm.Doctor(context.Background(), tt.opts...)
			got := map[string]smolvm.Check{}
			for _, c := range checks {
				if c.Name == "" || c.Detail == "" {
					t.Errorf("check without name or detail: %+v", c)
				}
				if !c.OK && c.Fix == "" {
					t.Errorf("failed check %q says no fix: %+v", c.Name, c)
				}
				got[c.Name] = c
			}
			for _, name := range []string{"qemu", "kvm", "kernel", "e2fsprogs", "tap networking", "state dir", "agent", "default image"} {
				if _, ok := got[name]; !ok {
					t.Errorf("no %q check in %+v", name, checks)
				}
			}
			for name, ok := range tt.want {
				if got[name].OK != ok {
					t.Errorf("check %q: OK = %v, want %v (%+v)", name, got[name].OK, ok, got[name])
				}
			}
			if !got["kvm"].Optional || !got["tap networking"].Optional || got["qemu"].Optional {
				t.Errorf("kvm and tap networking should be optional, qemu required: %+v", checks)
			}
		})
	}
}
