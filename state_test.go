package smolvm_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/statedir"
)

// TestStatePrivate creates a fresh state directory through each entry
// point and checks nothing in it is open to other users: the database
// holds env values, the VM directories keys and consoles.
func TestStatePrivate(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 4*time.Minute)
	alpine := os.Getenv("SMOLVM_ALPINE_SOURCE")
	tests := []struct {
		name string
		make func(t *testing.T, home string)
	}{
		{"list", func(t *testing.T, home string) {
			if _, err := smolvm.List(ctx, smolvm.WithHome(home)); err != nil {
				t.Fatal(err)
			}
		}},
		{"doctor", func(t *testing.T, home string) { smolvm.Doctor(ctx, smolvm.WithHome(home)) }},
		{"cli", func(t *testing.T, home string) {
			for _, args := range [][]string{{"list"}, {"image", "list"}, {"doctor"}} {
				cmd := exec.CommandContext(ctx, testEnv.bin, append(args, "--home", home)...)
				cmd.Run() // doctor exits non-zero for missing optional parts
			}
		}},
		{"image build", func(t *testing.T, home string) {
			b := &image.Builder{CacheDir: home, AlpineSource: alpine}
			if _, err := b.Build(ctx, "small", image.BuildOptions{From: "alpine", Password: "pw", SizeMiB: 72}); err != nil {
				t.Fatal(err)
			}
		}},
		{"vm", func(t *testing.T, home string) {
			vm := newVM(t, ctx, smolvm.VMConfig{Env: map[string]string{"TOKEN": "secret"}}, smolvm.WithHome(home))
			startVM(t, ctx, vm)
			if _, err := os.Stat(filepath.Join(home, "smolvm.db-wal")); err != nil {
				t.Errorf("the database's WAL is not there to check: %v", err)
			}
			checkPrivate(t, home) // while it runs: console, sockets, -wal/-shm
			if err := vm.Stop(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"loose home of an older smolvm", func(t *testing.T, home string) {
			os.Mkdir(home, 0o755)
			os.WriteFile(filepath.Join(home, "smolvm.db"), nil, 0o644)
			if _, err := smolvm.List(ctx, smolvm.WithHome(home)); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "state", "smolvm")
			tt.make(t, home)
			checkPrivate(t, home)
			if _, err := os.Stat(filepath.Join(home, "smolvm.db")); tt.name == "list" && err != nil {
				t.Errorf("no database made: %v", err)
			}
		})
	}
}

func checkPrivate(t *testing.T, home string) {
	t.Helper()
	loose, err := statedir.Walk(home)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range loose {
		t.Errorf("open to other users: %s", l)
	}
}

func TestStateDirOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory another user owns")
	}
	home := filepath.Join(t.TempDir(), "theirs")
	os.Mkdir(home, 0o700)
	os.Chown(home, 65534, 65534)
	_, err := smolvm.List(context.Background(), smolvm.WithHome(home))
	if err == nil {
		t.Fatal("a state directory owned by nobody was used")
	}
	t.Log(err)
}
