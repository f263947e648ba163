package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// TestProcTableWithReaper: background processes keep their exit statuses
// (codes and signals) while the reaper, as PID 1 runs it, reaps the
// orphans they leave behind.
func TestProcTableWithReaper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := NewReaper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := NewServer(ServerConfig{HostKey: key, AuthorizedKeys: []ssh.PublicKey{key.PublicKey()},
		HomeDir: dir, EnvFile: dir + "/env.json", Shell: "/bin/sh", Reaper: r})
	if err != nil {
		t.Fatal(err)
	}
	var procs []*bgProc
	for i := range 30 {
		p, err := srv.procs.start(&argvSpec{Shell: fmt.Sprintf("(sleep 0.05) & exit %d", i%7)}, false)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	killed, err := srv.procs.start(&argvSpec{Argv: []string{"sleep", "1000"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(time.Minute)
	for i, p := range append(procs, killed) {
		for {
			p.mu.Lock()
			done, ex, changed := p.done(), p.exit, p.changed
			p.mu.Unlock()
			if done {
				want := procExit{ExitCode: i % 7}
				if p == killed {
					want = procExit{ExitCode: 128 + 9, Signal: "KILL"}
				}
				if ex != want {
					t.Errorf("%s: exit %+v, want %+v", p.id, ex, want)
				}
				break
			}
			select {
			case <-changed:
			case <-deadline:
				t.Fatalf("%s did not finish", p.id)
			}
		}
	}
	if n := len(srv.procs.list()); n != 31 {
		t.Errorf("list has %d processes, want 31", n)
	}
}

// TestProcTableEvicts: the table holds at most maxProcs processes; the
// oldest exited ones make room.
func TestProcTableEvicts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts over a thousand processes")
	}
	srv := &Server{shell: "/bin/sh", homeDir: t.TempDir(), env: &envStore{path: t.TempDir() + "/env.json"}, log: slog.New(slog.DiscardHandler)}
	srv.procs = newProcTable(srv)
	start := func() *bgProc {
		t.Helper()
		p, err := srv.procs.start(&argvSpec{Argv: []string{"true"}}, false)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	waitDone := func(p *bgProc) {
		for {
			p.mu.Lock()
			done, changed := p.done(), p.changed
			p.mu.Unlock()
			if done {
				return
			}
			<-changed
		}
	}
	var first *bgProc
	for i := range maxProcs {
		p := start()
		if i == 0 {
			first = p
		}
		waitDone(p)
	}
	start()
	list := srv.procs.list()
	if len(list) != maxProcs || list[0].ID == first.id {
		t.Fatalf("after %d starts: %d listed, first %s", maxProcs+1, len(list), list[0].ID)
	}
	if _, err := srv.procs.get(first.id); err == nil {
		t.Fatalf("%s still there", first.id)
	}
}
