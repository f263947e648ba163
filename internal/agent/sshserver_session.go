package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	// outputLinger is how long output keeps flowing after the command has
	// exited while something else (typically a background job started with
	// `cmd &`) still holds its stdout or pty open. OpenSSH waits for EOF
	// forever in that case; we forward output until it has been quiet this
	// long, so `ssh vm 'daemon &'` returns promptly without cutting off
	// output the command itself wrote.
	outputLinger = 200 * time.Millisecond
)

// session is one "session" channel. It collects env and pty requests, then
// runs at most one command, shell or subsystem.
type session struct {
	srv *Server
	ch  ssh.Channel
	log *slog.Logger

	env     []string    // "env" requests, in arrival order
	pty     *ptyRequest // nil unless the client sent pty-req
	started bool

	wg sync.WaitGroup // every goroutine the session starts

	// exited is set once the command is reaped; output copiers then linger.
	exited atomic.Bool

	mu   sync.Mutex
	proc *os.Process // the running command; nil before start and once it exits
	ptmx *os.File    // pty master while the command runs

	stdin     *os.File // write end of the command's stdin pipe (no pty)
	stdinOnce sync.Once

	gone chan struct{} // closed once the channel is, for waits that outlast it
}

type ptyRequest struct {
	term       string
	cols, rows uint32
}

// handleSession serves one session channel until the client closes it or
// the connection drops, then kills whatever still runs in it.
func (s *Server) handleSession(nch ssh.NewChannel, log *slog.Logger) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	sess := &session{srv: s, ch: ch, log: log, gone: make(chan struct{})}
	for req := range reqs {
		sess.handle(req)
	}
	sess.teardown()
}

func (s *session) handle(req *ssh.Request) {
	reply := func(ok bool) {
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
	switch req.Type {
	case "env":
		var p struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &p) != nil || !validEnvEntry(p.Name, p.Value) {
			reply(false)
			return
		}
		s.env = append(s.env, p.Name+"="+p.Value)
		reply(true)
	case "pty-req":
		var p struct {
			Term                 string
			Cols, Rows, PxW, PxH uint32
			Modes                string
		}
		if s.started || ssh.Unmarshal(req.Payload, &p) != nil {
			reply(false)
			return
		}
		s.pty = &ptyRequest{term: p.Term, cols: p.Cols, rows: p.Rows}
		reply(true)
	case "window-change":
		var p struct{ Cols, Rows, PxW, PxH uint32 }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			reply(false)
			return
		}
		reply(s.resize(p.Cols, p.Rows) == nil)
	case "exec":
		var p struct{ Command string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			reply(false)
			return
		}
		s.start(req, func() (func(), error) { return s.startCommand(s.srv.shell, "-c", p.Command) })
	case "shell":
		s.start(req, func() (func(), error) { return s.startCommand(s.srv.shell, "-l") })
	case "exec-argv@smolvm":
		s.start(req, func() (func(), error) { return s.startArgv(req.Payload) })
	case "subsystem":
		var p struct{ Name string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			reply(false)
			return
		}
		switch p.Name {
		case "sftp":
			s.start(req, s.startSFTP)
		case "smolvm-env":
			s.start(req, s.startEnv)
		case "smolvm-proc":
			s.start(req, s.startProc)
		case "smolvm-fs":
			s.start(req, s.startFS)
		case "smolvm-watch":
			s.start(req, s.startWatch)
		case "smolvm-secrets":
			s.start(req, s.startSecrets)
		default:
			reply(false)
		}
	case "signal":
		var p struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			reply(false)
			return
		}
		reply(s.signal(p.Signal) == nil)
	default:
		reply(false)
	}
}

// start runs prepare, answers req, and only then lets the work begin, so
// the client sees the reply before any output or exit status.
func (s *session) start(req *ssh.Request, prepare func() (func(), error)) {
	if s.started {
		_ = req.Reply(false, nil)
		return
	}
	begin, err := prepare()
	if err != nil {
		s.log.Warn("ssh session: start failed", "request", req.Type, "err", err)
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
		return
	}
	s.started = true
	if req.WantReply {
		_ = req.Reply(true, nil)
	}
	begin()
}

// teardown runs once the channel is closed: it kills the command's process
// group if the command still runs and waits for every session goroutine.
func (s *session) teardown() {
	close(s.gone)
	s.mu.Lock()
	if s.proc != nil {
		_ = unix.Kill(-s.proc.Pid, unix.SIGKILL)
	}
	s.mu.Unlock()
	s.closeStdin()
	s.wg.Wait()
	_ = s.ch.Close()
}

func (s *session) closeStdin() {
	s.stdinOnce.Do(func() {
		if s.stdin != nil {
			s.stdin.Close()
		}
	})
}

func (s *session) signal(name string) error {
	sig := unix.SignalNum("SIG" + name)
	if sig == 0 {
		return fmt.Errorf("unknown signal %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return errors.New("no running command")
	}
	// Setsid made the command a process-group leader: signal its whole group
	// so pipelines and subshells go too.
	return unix.Kill(-s.proc.Pid, sig)
}

func (s *session) resize(cols, rows uint32) error {
	if s.pty != nil {
		s.pty.cols, s.pty.rows = cols, rows
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptmx == nil {
		return nil // applied when the pty is created
	}
	return setWinsize(s.ptmx, cols, rows)
}

// startCommand starts argv with the session's environment, in its own
// session and process group, on a pty if one was requested.
func (s *session) startCommand(argv ...string) (func(), error) {
	stored, err := s.srv.env.load()
	if err != nil {
		// A broken env file must not lock the host out of the guest.
		s.log.Warn("ssh session: ignoring env file", "err", err)
	}
	var term string
	if s.pty != nil {
		term = s.pty.term
	}
	cmd := &exec.Cmd{
		Path:        argv[0],
		Args:        argv,
		Dir:         s.srv.homeDir,
		Env:         buildEnv(s.srv.homeDir, s.srv.shell, term, s.srv.commandVars(stored), s.env),
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if s.pty != nil {
		return s.startPTY(cmd)
	}
	return s.startPipes(cmd)
}

// buildEnv returns the command environment: the fixed base, then the stored
// variables, then the session's env requests; later entries win.
func buildEnv(home, shell, term string, stored map[string]string, session []string) []string {
	env := []string{
		"PATH=" + defaultPath,
		"HOME=" + home,
		"USER=root",
		"LOGNAME=root",
		"SHELL=" + shell,
	}
	if term != "" {
		env = append(env, "TERM="+term)
	}
	for _, k := range slices.Sorted(maps.Keys(stored)) {
		env = append(env, k+"="+stored[k])
	}
	env = append(env, session...)

	// Keep each name once, at its first position, with its last value.
	idx := make(map[string]int, len(env))
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[name]; ok {
			out[i] = kv
			continue
		}
		idx[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// startPipes starts cmd with stdin, stdout and stderr on separate pipes.
// The parent ends are our own *os.File pipes, not io.Readers handed to
// exec.Cmd, so Wait never blocks on copying and we control when copying
// stops.
func (s *session) startPipes(cmd *exec.Cmd) (func(), error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if err := s.srv.startProcess(cmd); err != nil {
		closeAll()
		return nil, err
	}
	inR.Close()
	outW.Close()
	errW.Close()
	s.mu.Lock()
	s.proc = cmd.Process
	s.mu.Unlock()
	s.stdin = inW

	return func() {
		s.wg.Go(func() {
			// Client EOF (or channel close) closes the command's stdin.
			_, _ = io.Copy(inW, s.ch)
			s.closeStdin()
		})
		var copies sync.WaitGroup
		copies.Go(func() { s.copyOut(s.ch, outR) })
		copies.Go(func() { s.copyOut(s.ch.Stderr(), errR) })
		s.wg.Go(func() { s.wait(cmd, &copies, outR, errR) })
	}, nil
}

// startPTY starts cmd as the session leader of a new pty.
func (s *session) startPTY(cmd *exec.Cmd) (func(), error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("open pty: %w", err)
	}
	defer tty.Close()
	master, err := pollable(ptmx)
	if err != nil {
		return nil, err
	}
	if err := setWinsize(master, s.pty.cols, s.pty.rows); err != nil {
		s.log.Debug("ssh session: set window size", "err", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr.Setctty = true
	cmd.SysProcAttr.Ctty = 0 // child's stdin
	if err := s.srv.startProcess(cmd); err != nil {
		master.Close()
		return nil, err
	}
	s.mu.Lock()
	s.proc = cmd.Process
	s.ptmx = master
	s.mu.Unlock()

	return func() {
		// Input stops at client EOF but the terminal stays open, as with
		// sshd: on a pty, EOF is the line discipline's business (^D).
		s.wg.Go(func() { _, _ = io.Copy(master, s.ch) })
		var copies sync.WaitGroup
		copies.Go(func() { s.copyOut(s.ch, master) })
		s.wg.Go(func() { s.wait(cmd, &copies, master) })
	}, nil
}

// copyOut forwards r to w until EOF, a write error, or - once the command
// has exited - outputLinger without data.
func (s *session) copyOut(w io.Writer, r *os.File) {
	buf := make([]byte, 32<<10)
	for {
		if s.exited.Load() {
			_ = r.SetReadDeadline(time.Now().Add(outputLinger))
		}
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF; EIO from a pty master once no slave is open; deadline.
			return
		}
	}
}

// wait reaps cmd, lets output drain, reports the exit and closes the channel.
func (s *session) wait(cmd *exec.Cmd, copies *sync.WaitGroup, outs ...*os.File) {
	// Wait for exit without reaping first, and forget the process before
	// reaping it: once reaped its pid may be reused, and kill(-pid) from
	// signal or teardown would hit a stranger.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	s.mu.Lock()
	s.proc = nil
	s.ptmx = nil
	s.mu.Unlock()
	_ = cmd.Wait() // the exit is in ProcessState
	s.srv.processDone(cmd.Process.Pid)

	s.exited.Store(true)
	deadline := time.Now().Add(outputLinger)
	for _, f := range outs {
		_ = f.SetReadDeadline(deadline)
	}
	copies.Wait()
	for _, f := range outs {
		f.Close()
	}
	s.sendExit(cmd.ProcessState)
	_ = s.ch.Close()
	s.closeStdin()
}

// sendExit reports how the command ended: exit-signal when a signal killed
// it (so clients can say so), else exit-status.
func (s *session) sendExit(ps *os.ProcessState) {
	if ps == nil {
		s.sendExitStatus(255)
		return
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		name := strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
		if name == "" {
			s.sendExitStatus(128 + uint32(ws.Signal()))
			return
		}
		payload := struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: name, CoreDumped: ws.CoreDump()}
		_, _ = s.ch.SendRequest("exit-signal", false, ssh.Marshal(payload))
		return
	}
	s.sendExitStatus(uint32(ps.ExitCode()))
}

func (s *session) sendExitStatus(code uint32) {
	_, _ = s.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
}

// startSFTP serves SFTP in-process on the channel, rooted at the home dir.
func (s *session) startSFTP() (func(), error) {
	srv, err := sftp.NewServer(s.ch, sftp.WithServerWorkingDirectory(s.srv.homeDir))
	if err != nil {
		return nil, fmt.Errorf("sftp server: %w", err)
	}
	return func() {
		s.wg.Go(func() {
			code := uint32(0)
			if err := srv.Serve(); err != nil {
				s.log.Debug("ssh session: sftp", "err", err)
				code = 1
			}
			s.sendExitStatus(code)
			_ = s.ch.Close()
		})
	}, nil
}

// pollable returns f's descriptor re-wrapped so that the runtime poller owns
// it. creack/pty leaves the master in blocking mode (its ioctls go through
// Fd), and a blocking file can neither take read deadlines nor be unblocked
// by Close. f is closed.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("pty master: %w", err)
	}
	fd := -1
	var dupErr error
	if err := sc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("pty master: %w", err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("pty master: dup: %w", dupErr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pty master: set nonblock: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func setWinsize(master *os.File, cols, rows uint32) error {
	sc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	ws := &unix.Winsize{Col: uint16(min(cols, 0xffff)), Row: uint16(min(rows, 0xffff))}
	var ioErr error
	if err := sc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws)
	}); err != nil {
		return err
	}
	return ioErr
}
