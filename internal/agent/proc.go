package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Bounds of the background-process table: everything in it is the guest's
// memory, and what a process writes is under nobody's control.
const (
	maxProcs       = 1024    // running and exited; the oldest exited go first
	procRingSize   = 1 << 20 // recent output kept per process, both streams
	procChunk      = 32 << 10
	maxStdinWrite  = 1 << 20 // bytes in one stdin request
	stdinWriteWait = 30 * time.Second
)

// procTable holds the background processes the host started. They belong
// to the agent, not to an SSH session, so they outlive the connection that
// started them.
type procTable struct {
	srv   *Server
	mu    sync.Mutex
	byID  map[string]*bgProc
	order []*bgProc // in start order
	next  uint64
}

func newProcTable(srv *Server) *procTable {
	return &procTable{srv: srv, byID: map[string]*bgProc{}}
}

// procExit is how a process ended. A process killed by a signal has
// Signal set (TERM, KILL...) and ExitCode 128+its number, as a shell says.
type procExit struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	Core     bool   `json:"core_dumped,omitempty"`
}

// procInfo is what list and get report of one process.
type procInfo struct {
	ID        string     `json:"id"`
	PID       int        `json:"pid"`
	Argv      []string   `json:"argv,omitempty"`
	Shell     string     `json:"shell,omitempty"`
	Dir       string     `json:"dir,omitempty"`
	User      string     `json:"user,omitempty"`
	Stdin     bool       `json:"stdin,omitempty"` // stdin is open for writing
	StartedAt time.Time  `json:"started_at"`
	Running   bool       `json:"running"`
	ExitedAt  *time.Time `json:"exited_at,omitempty"`
	Exit      *procExit  `json:"exit,omitempty"`
	// OutputBytes is all the process wrote; Dropped of it is no longer
	// in the buffer.
	OutputBytes int64 `json:"output_bytes"`
	Dropped     int64 `json:"dropped_bytes,omitempty"`
	// Truncated says a list shortened the command (Argv, Shell); get
	// returns all of it.
	Truncated bool `json:"command_truncated,omitempty"`
}

// maxListCommand is the most of one command (its words' bytes) a list
// carries: 1024 processes of megabytes of arguments each must still make
// a list the host reads (its line bound is 8 MiB).
const maxListCommand = 4 << 10

// abbreviate cuts the command to maxListCommand bytes, whole words of
// Argv first (a cut word ends at a rune boundary).
func (in *procInfo) abbreviate() {
	cut := func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		return s[:n]
	}
	if len(in.Shell) > maxListCommand {
		in.Shell, in.Truncated = cut(in.Shell, maxListCommand), true
	}
	left := maxListCommand
	for i, w := range in.Argv {
		if len(w) > left {
			in.Argv, in.Truncated = append(in.Argv[:i:i], cut(w, left)), true
			return
		}
		left -= len(w)
	}
}

// bgProc is one background process and its recent output.
type bgProc struct {
	id      string
	spec    argvSpec
	pid     int
	started time.Time

	stdinMu   sync.Mutex  // one stdin write at a time
	stdin     *os.File    // nil unless kept open, and once closed
	stdinOpen atomic.Bool // stdin != nil, readable while a write blocks

	mu       sync.Mutex
	ring     ring
	changed  chan struct{} // closed (and replaced) on output and on exit
	exiting  bool          // about to be reaped: its pid may be reused
	exited   bool          // reaped, exit is set
	exitedAt time.Time
	exit     procExit
	readers  int // output pipes not yet at EOF
}

// notify wakes followers; p.mu held.
func (p *bgProc) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *bgProc) info() procInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := procInfo{
		ID: p.id, PID: p.pid, Argv: p.spec.Argv, Shell: p.spec.Shell, Dir: p.spec.Dir, User: p.spec.User,
		StartedAt: p.started, Running: !p.exited, OutputBytes: p.ring.total, Dropped: p.ring.first(),
	}
	in.Stdin = p.stdinOpen.Load()
	if p.exited {
		at, ex := p.exitedAt, p.exit
		in.ExitedAt, in.Exit = &at, &ex
	}
	return in
}

// done reports whether the process has exited and all its output is in.
func (p *bgProc) done() bool { return p.exited && p.readers == 0 }

// start runs sp in the background. keepStdin gives it a pipe the host
// writes with "stdin"; else its stdin is /dev/null.
func (t *procTable) start(sp *argvSpec, keepStdin bool) (*bgProc, error) {
	cmd, err := t.srv.command(sp, "", nil)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.order) >= maxProcs && !t.evictLocked() {
		return nil, errKind("limit", "%d background processes run already; wait for or kill some", maxProcs)
	}

	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var stdinW *os.File
	if keepStdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		files = append(files, r, w)
		cmd.Stdin, stdinW = r, w
	} else {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		files = append(files, null)
		cmd.Stdin = null
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	files = append(files, outR, outW)
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	files = append(files, errR, errW)
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := t.srv.startProcess(cmd); err != nil {
		closeAll()
		return nil, asCmdError(err)
	}
	// Close the child's ends (and /dev/null) in the agent.
	for _, f := range files {
		if f != stdinW && f != outR && f != errR {
			f.Close()
		}
	}
	t.next++
	p := &bgProc{
		id: "p" + strconv.FormatUint(t.next, 10), spec: *sp, pid: cmd.Process.Pid, started: time.Now(),
		stdin: stdinW, changed: make(chan struct{}), readers: 2,
	}
	p.stdinOpen.Store(stdinW != nil)
	t.byID[p.id] = p
	t.order = append(t.order, p)
	go p.collect(outR, 'o')
	go p.collect(errR, 'e')
	go t.wait(p, cmd, outR, errR)
	return p, nil
}

// evictLocked drops the oldest exited process; false if all run.
func (t *procTable) evictLocked() bool {
	for i, p := range t.order {
		p.mu.Lock()
		gone := p.done()
		p.mu.Unlock()
		if gone {
			delete(t.byID, p.id)
			t.order = append(t.order[:i:i], t.order[i+1:]...)
			return true
		}
	}
	return false
}

func (t *procTable) get(id string) (*bgProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.byID[id]
	if !ok {
		return nil, errKind("not_found", "no background process %q (smolvm ps lists them; exited ones are kept until %d newer ones push them out)", id, maxProcs)
	}
	return p, nil
}

func (t *procTable) list() []procInfo {
	t.mu.Lock()
	procs := append([]*bgProc{}, t.order...)
	t.mu.Unlock()
	out := make([]procInfo, 0, len(procs))
	for _, p := range procs {
		in := p.info()
		in.abbreviate()
		out = append(out, in)
	}
	return out
}

// collect moves what the process writes on f into its ring until EOF, or
// until the process has exited and f stayed quiet for outputLinger (a
// background child of its own may hold the pipe for ever).
func (p *bgProc) collect(f *os.File, stream byte) {
	defer f.Close()
	buf := make([]byte, procChunk)
	for {
		n, err := f.Read(buf)
		p.mu.Lock()
		if n > 0 {
			p.ring.write(stream, buf[:n])
			p.notify()
		}
		if err != nil {
			p.readers--
			p.notify()
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// wait reaps the process, as session.wait does: forget the pid before
// reaping, so a signal never reaches a process that reused it.
func (t *procTable) wait(p *bgProc, cmd *exec.Cmd, outs ...*os.File) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	p.mu.Lock()
	p.exiting = true
	p.mu.Unlock()
	_ = cmd.Wait()
	t.srv.processDone(cmd.Process.Pid)
	ex := procExit{ExitCode: 255}
	if ps := cmd.ProcessState; ps != nil {
		ex.ExitCode = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ex.ExitCode = 128 + int(ws.Signal())
			ex.Signal = strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
			ex.Core = ws.CoreDump()
		}
	}
	deadline := time.Now().Add(outputLinger)
	for _, f := range outs {
		_ = f.SetReadDeadline(deadline)
	}
	p.mu.Lock()
	p.exited, p.exitedAt, p.exit = true, time.Now(), ex
	p.notify()
	p.mu.Unlock()
	p.closeStdin()
}

// parseSignal takes TERM, SIGTERM, term or 15.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, errKind("invalid", "signal %d out of range 1-64", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, errKind("invalid", "unknown signal %q; give a name such as TERM, KILL, INT, HUP or a number", s)
}

// signal sends sig to the process's group (it is a session leader, so
// its children go too).
func (p *bgProc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exiting {
		return errKind("exited", "process %s has exited", p.id)
	}
	if err := unix.Kill(-p.pid, sig); err != nil {
		if errors.Is(err, unix.ESRCH) {
			// Its group leader changed group; reach it alone.
			err = unix.Kill(p.pid, sig)
		}
		if err != nil {
			return fmt.Errorf("signal process %s: %w", p.id, err)
		}
	}
	return nil
}

// writeStdin writes data to the process's stdin and closes it if close.
func (p *bgProc) writeStdin(data []byte, closeIt bool) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		if len(data) == 0 && closeIt {
			return nil
		}
		return errKind("invalid", "process %s has no open stdin (start it with stdin kept open)", p.id)
	}
	if len(data) > 0 {
		// A process that does not read must not hold this session for ever.
		_ = p.stdin.SetWriteDeadline(time.Now().Add(stdinWriteWait))
		if n, err := p.stdin.Write(data); err != nil {
			return errKind("failed", "process %s: wrote %d of %d bytes to stdin: %v", p.id, n, len(data), err)
		}
	}
	if closeIt {
		p.stdin.Close()
		p.stdin = nil
		p.stdinOpen.Store(false)
	}
	return nil
}

func (p *bgProc) closeStdin() { _ = p.writeStdin(nil, true) }

// ring keeps the last procRingSize bytes of output as chunks tagged with
// their stream and their offset in the whole output.
type ring struct {
	chunks []chunk
	size   int
	total  int64 // bytes ever written
}

type chunk struct {
	stream byte // 'o' stdout, 'e' stderr
	off    int64
	data   []byte
}

func (r *ring) write(stream byte, p []byte) {
	r.chunks = append(r.chunks, chunk{stream: stream, off: r.total, data: append([]byte(nil), p...)})
	r.size += len(p)
	r.total += int64(len(p))
	for r.size > procRingSize {
		c := &r.chunks[0]
		if over := r.size - procRingSize; over < len(c.data) {
			c.data = c.data[over:]
			c.off += int64(over)
			r.size -= over
			break
		}
		r.size -= len(c.data)
		r.chunks[0] = chunk{}
		r.chunks = r.chunks[1:]
	}
}

// first is the offset of the oldest byte kept.
func (r *ring) first() int64 {
	if len(r.chunks) == 0 {
		return r.total
	}
	return r.chunks[0].off
}

// from returns the chunks at or after offset off (the first one cut to
// start there) and how many bytes since off are no longer kept.
func (r *ring) from(off int64) (out []chunk, dropped int64) {
	if f := r.first(); off < f {
		dropped, off = f-off, f
	}
	for _, c := range r.chunks {
		end := c.off + int64(len(c.data))
		if end <= off {
			continue
		}
		if c.off < off {
			c.data = c.data[off-c.off:]
			c.off = off
		}
		out = append(out, c)
	}
	return out, dropped
}
