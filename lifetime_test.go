package smolvm_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/keeper"
)

// TestLifetimeValidation: bad lifetimes, labels and label filters are
// refused before anything is made, matching ErrInvalid.
func TestLifetimeValidation(t *testing.T) {
	ctx := testContext(t, time.Minute)
	home := t.TempDir()
	many := map[string]string{}
	for i := range smolvm.MaxLabels + 1 {
		many["k"+strconv.Itoa(i)] = "v"
	}
	for _, tt := range []struct {
		name string
		cfg  smolvm.VMConfig
		want string
	}{
		{"negative ttl", smolvm.VMConfig{TTL: -time.Second}, "invalid ttl"},
		{"ttl of centuries", smolvm.VMConfig{TTL: 200 * 365 * 24 * time.Hour}, "invalid ttl"},
		{"unknown on-expire", smolvm.VMConfig{TTL: time.Minute, OnExpire: "explode"}, "invalid on expire"},
		{"label key with space", smolvm.VMConfig{Labels: map[string]string{"a b": "1"}}, "invalid label key"},
		{"label key too long", smolvm.VMConfig{Labels: map[string]string{strings.Repeat("k", 64): "1"}}, "invalid label key"},
		{"empty label key", smolvm.VMConfig{Labels: map[string]string{"": "1"}}, "invalid label key"},
		{"label value with newline", smolvm.VMConfig{Labels: map[string]string{"k": "a\nb"}}, "invalid label value"},
		{"label value too long", smolvm.VMConfig{Labels: map[string]string{"k": strings.Repeat("v", 256)}}, "invalid label value"},
		{"too many labels", smolvm.VMConfig{Labels: many}, "invalid labels"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := smolvm.NewFromConfig(ctx, tt.cfg, smolvm.WithHome(home))
			if err == nil {
				vm.Delete(ctx)
				t.Fatal("no error")
			}
			if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrInvalid with %q", err, tt.want)
			}
		})
	}
	for _, sel := range []string{"", "a b", "k=a\nb", "=v"} {
		if _, err := smolvm.List(ctx, smolvm.WithHome(home), smolvm.WithLabelFilter(sel)); !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("filter %q: %v, want ErrInvalid", sel, err)
		}
	}
}

// TestLabelFilter: List's label filter on VMs that are only created.
func TestLabelFilter(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	suite := "labels-" + strconv.Itoa(os.Getpid())
	for id, labels := range map[string]map[string]string{
		"lab-web": {"suite": suite, "role": "web", "team": "ml"},
		"lab-db":  {"suite": suite, "role": "db", "team": "ml", "tier": ""},
		"lab-etc": {"suite": suite, "role": "web", "team": "infra/ops"},
	} {
		newVM(t, ctx, smolvm.VMConfig{ID: id, Labels: labels}, smolvm.WithColdBoot())
	}
	for _, tt := range []struct {
		filter []string
		want   []string
	}{
		{nil, []string{"lab-db", "lab-etc", "lab-web"}},
		{[]string{"role=web"}, []string{"lab-etc", "lab-web"}},
		{[]string{"role=web", "team=ml"}, []string{"lab-web"}},
		{[]string{"tier"}, []string{"lab-db"}},
		{[]string{"tier="}, []string{"lab-db"}},
		{[]string{"team=infra/ops"}, []string{"lab-etc"}},
		{[]string{"team"}, []string{"lab-db", "lab-etc", "lab-web"}},
		{[]string{"role=cache"}, nil},
		{[]string{"nope"}, nil},
		{[]string{"role=Web"}, nil}, // values match exactly
	} {
		vms, err := smolvm.List(ctx, smolvm.WithLabelFilter(append([]string{"suite=" + suite}, tt.filter...)...))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, vm := range vms {
			got = append(got, vm.ID)
		}
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("filter %q: got %q, want %q", tt.filter, got, tt.want)
		}
	}
}

// syncBuffer is a bytes.Buffer for a logger that goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// filesWith lists the files that hold any of the needles. grep reads
// them, not this process: closing a descriptor of the database here would
// drop SQLite's POSIX locks on it, which this process holds too.
func filesWith(t *testing.T, files []string, needles ...string) []string {
	t.Helper()
	args := []string{"-l", "-a", "-F"}
	for _, n := range needles {
		args = append(args, "-e", n)
	}
	out, err := exec.Command("grep", append(args, files...)...).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil // none matched
	}
	if err != nil {
		t.Fatalf("grep: %v", err)
	}
	return strings.Fields(string(out))
}

// waitState waits for the VM to reach want, on the host's clock, and
// returns when it saw it.
func waitState(t *testing.T, ctx context.Context, vm *smolvm.VM, want smolvm.VMState) time.Time {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := vm.Refresh(ctx)
		if want == smolvm.StateDeleted && errors.Is(err, smolvm.ErrNotFound) || err == nil && vm.Info().State == want {
			return time.Now()
		}
		if err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			t.Fatalf("refresh: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("VM %s is %s, never %s", vm.ID(), vm.Info().State, want)
		case <-tick.C:
		}
	}
}

// TestLifetimeSecretsKeeper boots two VMs. A holds a start secret and
// runs a command with one of its own: both reach its commands; memory
// captures of A are refused; B, a hostile neighbour, learns neither. B's
// keeper, killed by -9, is back at the next look and still enforces B's
// lifetime, which B, setting its own clock back, cannot stretch. A's
// lifetime ends with on-expire hibernate, which its secrets turn into a
// stop; a stopped VM past its lifetime with on-expire delete goes at the
// next List. Then no file of the state directory holds a secret.
func TestLifetimeSecretsKeeper(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	const startSecret, cmdSecret = "s3cr3t-start-9f1c2e", "s3cr3t-cmd-77ab0d"
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := newVM(t, ctx, smolvm.VMConfig{Labels: map[string]string{"suite": "life"}},
		smolvm.WithStartSecrets(map[string]string{"START_SECRET": startSecret}), smolvm.WithLogger(logger))
	b := newVM(t, ctx, smolvm.VMConfig{TTL: time.Hour}, smolvm.WithLogger(logger))
	startVM(t, ctx, a)
	startVM(t, ctx, b)

	t.Run("secrets reach the guest", func(t *testing.T) {
		if got := run(t, ctx, a, `echo "$START_SECRET"`).Stdout; got != startSecret+"\n" {
			t.Errorf("start secret in a command: %q", got)
		}
		res := run(t, ctx, a, `echo "$CMD_SECRET $START_SECRET"`, smolvm.WithSecret("CMD_SECRET", cmdSecret))
		if res.Stdout != cmdSecret+" "+startSecret+"\n" {
			t.Errorf("command secret: %q", res.Stdout)
		}
		if got := run(t, ctx, a, `echo "[$CMD_SECRET]"; grep -rl s3cr3t /etc /root 2>/dev/null; true`).Stdout; got != "[]\n" {
			t.Errorf("a command secret outlived its command, or is on the guest's disk: %q", got)
		}
	})

	t.Run("memory captures refused", func(t *testing.T) {
		_, err := a.Snapshot(ctx, "life-snap")
		if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), "secrets") {
			t.Errorf("snapshot: %v, want ErrInvalid about secrets", err)
		}
		if err := a.Pause(ctx, smolvm.ToDisk()); !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("hibernate: %v, want ErrInvalid", err)
		}
		if kids, err := a.Fork(ctx, 1); !errors.Is(err, smolvm.ErrInvalid) {
			for _, k := range kids {
				k.Delete(ctx)
			}
			t.Errorf("fork: %v, want ErrInvalid", err)
		}
	})

	t.Run("a neighbour learns no secret", func(t *testing.T) {
		got := run(t, ctx, b, `(env; cat /proc/[0-9]*/environ; cat /etc/smolvm/env.json) 2>/dev/null | tr '\0' '\n' | grep -c s3cr3t; true`).Stdout
		if got != "0\n" {
			t.Errorf("B sees %s lines with A's secrets", got)
		}
	})

	t.Run("killed keeper is back at the next look", func(t *testing.T) {
		p, ok := keeper.Find(b.DataDir())
		if !ok {
			t.Fatal("B has no keeper")
		}
		syscall.Kill(p.PID, syscall.SIGKILL)
		for deadline := time.Now().Add(10 * time.Second); keeper.Running(b.DataDir()); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) { // the lock goes with the process
				t.Fatal("the killed keeper's lock is still held")
			}
		}
		again, err := smolvm.FromID(ctx, b.ID())
		if err != nil {
			t.Fatal(err)
		}
		again.Close()
		q, ok := keeper.Find(b.DataDir())
		if !ok || q == p {
			t.Fatalf("no new keeper after a look: %+v, %v (killed %+v)", q, ok, p)
		}
	})

	t.Run("lifetimes end on time", func(t *testing.T) {
		// B's guest is root and hostile: its clock, set back, has no say.
		run(t, ctx, b, "date -s @946684800 >/dev/null")
		if err := b.SetTTL(ctx, 3*time.Second, smolvm.ExpireStop); err != nil {
			t.Fatal(err)
		}
		if err := a.SetTTL(ctx, 3*time.Second, smolvm.ExpireHibernate); err != nil {
			t.Fatal(err)
		}
		for _, vm := range []*smolvm.VM{b, a} {
			due := vm.Info().Config.ExpiresAt
			at := waitState(t, ctx, vm, smolvm.StateStopped) // A holds secrets: stopped, not hibernated
			t.Logf("%s: stopped %s after its lifetime ended", vm.ID(), at.Sub(due).Round(time.Millisecond))
			if late := at.Sub(due); late > 20*time.Second {
				t.Errorf("%s ended %s late", vm.ID(), late)
			}
		}
		if err := a.Start(ctx); !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("start after the lifetime ended: %v, want ErrInvalid", err)
		}
	})

	t.Run("stopped VM past its lifetime goes at the next list", func(t *testing.T) {
		if err := b.SetTTL(ctx, time.Millisecond, smolvm.ExpireDelete); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(b.Info().Config.ExpiresAt)) // for the lifetime to be over
		vms, err := smolvm.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(vms, func(v smolvm.VMInfo) bool { return v.ID == b.ID() }) {
			t.Error("listed after its lifetime ended with on-expire delete")
		}
		if _, err := smolvm.FromID(ctx, b.ID()); !errors.Is(err, smolvm.ErrNotFound) {
			t.Errorf("FromID: %v, want ErrNotFound", err)
		}
	})

	t.Run("no secret on the host's disk or in logs", func(t *testing.T) {
		files, _ := filepath.Glob(filepath.Join(testEnv.home, "smolvm.db*"))
		filepath.WalkDir(a.DataDir(), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) < 5 {
			t.Fatalf("only %d files to look at: %q", len(files), files)
		}
		if got := filesWith(t, files, startSecret, cmdSecret); len(got) > 0 {
			t.Errorf("files holding a secret: %q", got)
		}
		if got := filesWith(t, files, a.ID()); len(got) == 0 { // the check itself: the row and the logs hold it
			t.Errorf("grep finds not even the VM id in %q", files)
		}
		if l := logs.String(); strings.Contains(l, "s3cr3t") || !strings.Contains(l, "secrets handed over") {
			t.Errorf("logs hold a secret, or the handover was not logged:\n%s", l)
		}
	})
}
