package smolvm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestProcesses covers argv commands, background processes and terminal
// sessions on one VM, with the real agent.
func TestProcesses(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{})
	startVM(t, ctx, vm)

	t.Run("argv verbatim", func(t *testing.T) {
		args := []string{"a b", `"q"`, "'s'", "$(touch /tmp/pwned)", "`id`", "$HOME", "", "*", `\`}
		res, err := vm.Command(ctx, "printf", append([]string{"[%s]"}, args...)...).Run()
		if err != nil {
			t.Fatal(err)
		}
		want := "[a b][\"q\"]['s'][$(touch /tmp/pwned)][`id`][$HOME][][*][\\]"
		if !res.OK() || res.Stdout != want {
			t.Fatalf("= %+v, want stdout %q", res, want)
		}
		if res := run(t, ctx, vm, "test -e /tmp/pwned; echo $?"); res.Stdout != "1\n" {
			t.Fatal("an argument went through a shell")
		}
	})

	t.Run("cwd user env stdin", func(t *testing.T) {
		cmd := vm.Command(ctx, "sh", "-c", `pwd; id -un; echo "$FOO"; cat`)
		cmd.Dir, cmd.User, cmd.Env, cmd.Stdin = "/tmp", "nobody", map[string]string{"FOO": "bar baz"}, strings.NewReader("in\n")
		out, err := cmd.Output()
		if err != nil || string(out) != "/tmp\nnobody\nbar baz\nin\n" {
			t.Fatalf("= %q, %v", out, err)
		}
		res, err := vm.Command(ctx, "id", "-u").Run()
		if err != nil || res.Stdout != "0\n" {
			t.Fatalf("default user: %+v, %v", res, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		_, err := vm.Command(ctx, "no-such-program").Run()
		if !errors.Is(err, smolvm.ErrNotFound) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no-such-program") {
			t.Fatalf("missing program: %v", err)
		}
		cmd := vm.Command(ctx, "true")
		cmd.Dir = "/no/such/dir"
		if _, err := cmd.Run(); !errors.Is(err, smolvm.ErrNotFound) {
			t.Fatalf("missing dir: %v", err)
		}
		cmd = vm.Command(ctx, "true")
		cmd.User = "no-such-user"
		if _, err := cmd.Run(); !errors.Is(err, smolvm.ErrNotFound) {
			t.Fatalf("missing user: %v", err)
		}
		var ee *smolvm.ExitError
		if _, err := vm.Command(ctx, "sh", "-c", "echo oops >&2; exit 3").Output(); !errors.As(err, &ee) || ee.Result.ExitCode != 3 {
			t.Fatalf("exit 3: %v", err)
		}
	})

	t.Run("output limit", func(t *testing.T) {
		cmd := vm.Command(ctx, "head", "-c", "100000", "/dev/zero")
		cmd.OutputLimit = 1000
		res, err := cmd.Run()
		if err != nil || len(res.Stdout) != 1000 || !res.StdoutTruncated {
			t.Fatalf("= %d bytes, truncated %v, %v", len(res.Stdout), res != nil && res.StdoutTruncated, err)
		}
	})

	t.Run("background outlives its handle", func(t *testing.T) {
		// Start through a handle of its own, then close it (and its
		// connection): the process lives in the agent, not in the handle.
		h, err := smolvm.FromID(ctx, vm.ID())
		if err != nil {
			t.Fatal(err)
		}
		cmd := h.Command(ctx, "sh", "-c", `echo started; while read l; do echo "got $l"; done; sleep 1000`)
		cmd.StdinPipe = true
		p, err := cmd.Start()
		if err != nil {
			t.Fatal(err)
		}
		if p.ID() == "" || p.PID() <= 1 {
			t.Fatalf("handle %q pid %d", p.ID(), p.PID())
		}
		h.Close()
		vm2, err := smolvm.FromID(ctx, vm.ID())
		if err != nil {
			t.Fatal(err)
		}
		defer vm2.Close()
		list, err := vm2.Processes(ctx)
		if err != nil || !running(list, p.ID()) {
			t.Fatalf("list = %+v, %v", list, err)
		}
		p2, err := vm2.Process(ctx, p.ID())
		if err != nil || p2.PID() != p.PID() {
			t.Fatalf("Process = %v, %v", p2, err)
		}
		if err := p2.Write(ctx, []byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		w := &untilWriter{want: "got hello\n", hit: cancel}
		_, err = p2.Attach(actx, w, io.Discard, smolvm.AttachOptions{Follow: true})
		cancel()
		if !errors.Is(err, context.Canceled) || w.b.String() != "started\ngot hello\n" {
			t.Fatalf("attach = %v, output %q", err, w.b.String())
		}
		if err := p2.Signal(ctx, "TERM"); err != nil {
			t.Fatal(err)
		}
		st, err := p2.Wait(ctx)
		if err != nil || st.Signal != "TERM" || st.ExitCode != 143 {
			t.Fatalf("wait = %+v, %v; want signal TERM", st, err)
		}
		if err := p2.Signal(ctx, "KILL"); !errors.Is(err, smolvm.ErrProcessExited) {
			t.Fatalf("signal after exit: %v", err)
		}
		if _, err := vm2.Process(ctx, "p999999"); !errors.Is(err, smolvm.ErrNotFound) {
			t.Fatalf("unknown process: %v", err)
		}
	})

	t.Run("normal exit and shell form", func(t *testing.T) {
		p, err := vm.StartProcess(ctx, smolvm.ProcessSpec{Shell: "echo $((6*7)); exit 5", Dir: "/tmp"})
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait(ctx)
		if err != nil || st.ExitCode != 5 || st.Signal != "" {
			t.Fatalf("wait = %+v, %v", st, err)
		}
		var out bytes.Buffer
		info, err := p.Attach(ctx, &out, nil, smolvm.AttachOptions{Follow: true})
		if err != nil || out.String() != "42\n" || info.Running || info.Exit.ExitCode != 5 {
			t.Fatalf("attach = %q, %+v, %v", out.String(), info, err)
		}
	})

	// A hostile process writes as fast as it can, for ever: the agent
	// keeps a bounded buffer, the host's memory does not follow it, and
	// listing still works.
	t.Run("flood stays bounded", func(t *testing.T) {
		p, err := vm.StartProcess(ctx, smolvm.ProcessSpec{Args: []string{"cat", "/dev/zero"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Signal(context.Background(), "KILL")
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for {
			in, err := p.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if in.OutputBytes > 4*smolvm.ProcessOutputBuffer {
				if kept := in.OutputBytes - in.DroppedBytes; kept > smolvm.ProcessOutputBuffer {
					t.Fatalf("agent keeps %d bytes, cap %d", kept, smolvm.ProcessOutputBuffer)
				}
				break
			}
			if ctx.Err() != nil {
				t.Fatal(ctx.Err())
			}
		}
		list, err := vm.Processes(ctx)
		if err != nil || !running(list, p.ID()) {
			t.Fatalf("list during the flood: %v", err)
		}
		// Follow the flood for a while through a writer that keeps
		// nothing: the host holds no more than a line at a time.
		actx, cancel := context.WithCancel(ctx)
		var n countingWriter
		n.stop, n.after = cancel, 4<<20
		var dropped int64
		_, err = p.Attach(actx, &n, nil, smolvm.AttachOptions{Follow: true, Dropped: func(d int64) { dropped += d }})
		cancel()
		if !errors.Is(err, context.Canceled) || dropped == 0 {
			t.Fatalf("attach = %v after %d bytes, dropped %d", err, n.n, dropped)
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
			t.Fatalf("host heap grew %d bytes while following %d bytes", grew, n.n)
		}
		// The agent's own memory stays bounded too.
		res := run(t, ctx, vm, "grep VmRSS /proc/1/status")
		if kb := atoi(t, strings.Fields(res.Stdout)[1]); kb > 64<<10 {
			t.Fatalf("agent RSS %d kB after a flood", kb)
		}
	})

	t.Run("huge commands still list", func(t *testing.T) {
		// Commands of a megabyte or more each (many words: one is at most
		// 128 KiB in Linux): a list of them whole would pass the host's
		// bound on a reply line. The list carries the start of each and
		// says so; the process's own Info has all of it.
		words := make([]string, 2000)
		for i := range words {
			words[i] = strings.Repeat("w", 600)
		}
		var ids []string
		for range 8 {
			p, err := vm.StartProcess(ctx, smolvm.ProcessSpec{Args: append([]string{"sh", "-c", "sleep 30"}, words...)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, p.ID())
			defer p.Signal(context.Background(), "KILL")
		}
		list, err := vm.Processes(ctx)
		if err != nil {
			t.Fatalf("list of 8 commands of 1.2 MB: %v", err)
		}
		for _, in := range list {
			if slices.Contains(ids, in.ID) && (!in.CommandTruncated || len(strings.Join(in.Args, "")) > 4<<10) {
				t.Errorf("%s in the list: %d words, truncated %v", in.ID, len(in.Args), in.CommandTruncated)
			}
		}
		p, err := vm.Process(ctx, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		in, err := p.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if in.CommandTruncated || len(in.Args) != 3+len(words) {
			t.Errorf("Info: %d words, truncated %v", len(in.Args), in.CommandTruncated)
		}
	})

	t.Run("terminal session", func(t *testing.T) {
		ts := vm.StartTerminal(ctx, `stty size; while read x; do stty size; [ "$x" = q ] && exit 4; done`, smolvm.ExecOptions{}, smolvm.Terminal{Width: 100, Height: 30})
		defer ts.Close()
		var out bytes.Buffer
		buf := make([]byte, 4096)
		readUntil := func(want string) {
			t.Helper()
			for !regexp.MustCompile(want).MatchString(out.String()) {
				n, err := ts.Read(buf)
				out.Write(buf[:n])
				if err != nil {
					t.Fatalf("waiting for %q: %v, output %q", want, err, out.String())
				}
			}
		}
		readUntil("30 100")
		if err := ts.Resize(ctx, 60, 20); err != nil {
			t.Fatal(err)
		}
		// The resize travels apart from the input: ask until the
		// terminal says so.
		for i := 0; !strings.Contains(out.String(), "20 60"); i++ {
			if i == 100 {
				t.Fatalf("no resize seen: %q", out.String())
			}
			out.Reset()
			ts.Write([]byte("a\n"))
			readUntil(`[0-9]+ [0-9]+\r?\n`)
		}
		ts.Write([]byte("q\n"))
		io.Copy(io.Discard, ts)
		if code, err := ts.Wait(); err != nil || code != 4 {
			t.Fatalf("= %d, %v", code, err)
		}
	})
}

func running(list []smolvm.ProcessInfo, id string) bool {
	for _, p := range list {
		if p.ID == id && p.Running {
			return true
		}
	}
	return false
}

// untilWriter calls hit once its content ends with want.
type untilWriter struct {
	b    bytes.Buffer
	want string
	hit  func()
}

func (w *untilWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	if strings.HasSuffix(w.b.String(), w.want) {
		w.hit()
	}
	return len(p), nil
}

// countingWriter counts and calls stop past after bytes.
type countingWriter struct {
	n, after int64
	stop     func()
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if w.n > w.after {
		w.stop()
	}
	return len(p), nil
}
