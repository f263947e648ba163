package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/smolvm/smolvm"
)

// Limits of the tools, also stated in their schemas.
const (
	// DefaultOutputBytes is how much of each of stdout and stderr
	// run_command returns unless max_output_bytes says otherwise; the
	// rest is counted and dropped, and the result says so.
	DefaultOutputBytes = 32 << 10
	// MaxOutputBytes caps max_output_bytes and read_file's max_bytes.
	MaxOutputBytes = 1 << 20
	// DefaultReadBytes is read_file's default max_bytes.
	DefaultReadBytes = 64 << 10
	// MaxWriteBytes caps one write_file (after base64 decoding).
	MaxWriteBytes = 8 << 20
	// MaxCommandTimeout caps run_command's timeout_seconds.
	MaxCommandTimeout = time.Hour
	// fileTimeout bounds one read_file or write_file.
	fileTimeout = 2 * time.Minute
	maxFork     = 8
)

func addTool[In, Out any](srv *mcp.Server, t *mcp.Tool, h mcp.ToolHandlerFor[In, Out]) {
	schema, err := inputSchema[In]()
	if err != nil {
		panic(err) // the tags above are wrong: a programming error
	}
	t.InputSchema = schema
	mcp.AddTool(srv, t, h)
}

func ptr[T any](v T) *T { return &v }

// withSession gives a tool handler its session, and a context that is
// also cancelled when the session ends: a session that ends (stdin
// closed, SIGTERM, HTTP DELETE) must not wait for an hour-long command.
func withSession[In, Out any](s *Server, h func(context.Context, *session, In) (*mcp.CallToolResult, Out, error)) mcp.ToolHandlerFor[In, Out] {
	return func(ctx context.Context, req *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		st, err := s.session(req.Session)
		if err != nil {
			var zero Out
			return nil, zero, err
		}
		ctx, stop := st.bind(ctx)
		defer stop()
		res, out, err := h(ctx, st, in)
		if err != nil && st.ctx.Err() != nil {
			err = fmt.Errorf("the MCP session ended: %w", err)
		}
		return res, out, err
	}
}

func (s *Server) addTools(srv *mcp.Server) {
	addTool(srv, &mcp.Tool{
		Name:  "create_sandbox",
		Title: "Create a sandbox",
		Description: "Create and start a Linux sandbox: a microVM with its own kernel, root shell and network, " +
			"ready for run_command in about a second (the first one on a machine takes longer). " +
			"Returns its id. It is deleted when this MCP session ends unless keep is true.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, withSession(s, s.create))
	addTool(srv, &mcp.Tool{
		Name:  "run_command",
		Title: "Run a command in a sandbox",
		Description: "Run a shell command in a sandbox and return its exit code, stdout and stderr. " +
			"A non-zero exit code is a normal result, not an error. Output beyond max_output_bytes " +
			"(default 32 KiB per stream) is cut and marked. Past timeout_seconds (default 60) the command " +
			"is killed and the call fails with what it printed so far. Each call is a new shell: " +
			"use 'cd dir && ...' and files, not shell state, to carry things over.",
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(false)},
	}, withSession(s, s.run))
	addTool(srv, &mcp.Tool{
		Name:        "write_file",
		Title:       "Write a file into a sandbox",
		Description: "Create or replace a file in a sandbox with the given content (text, or base64 for binary), atomically. Up to 8 MiB.",
		Annotations: &mcp.ToolAnnotations{IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, withSession(s, s.writeFile))
	addTool(srv, &mcp.Tool{
		Name:  "read_file",
		Title: "Read a file from a sandbox",
		Description: "Read a regular file from a sandbox: up to max_bytes (default 64 KiB) from offset. " +
			"Text comes as text; other bytes also as base64. Devices, FIFOs and directories are refused (use run_command with ls for directories).",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, withSession(s, s.readFile))
	addTool(srv, &mcp.Tool{
		Name:        "list_sandboxes",
		Title:       "List sandboxes and snapshots",
		Description: "List the sandboxes this session may use (the ones it made, and ones kept by earlier MCP sessions) with their state, and the snapshots it may start from.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, withSession(s, s.list))
	addTool(srv, &mcp.Tool{
		Name:  "snapshot_sandbox",
		Title: "Snapshot a sandbox",
		Description: "Save a running sandbox's memory and disk under a name (it is paused only for the capture and runs on). " +
			"create_sandbox with from_snapshot then starts copies that resume exactly there, in well under a second. " +
			"Snapshots stay until delete_snapshot.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, withSession(s, s.snapshot))
	addTool(srv, &mcp.Tool{
		Name:  "fork_sandbox",
		Title: "Fork a sandbox",
		Description: "Make running copies of a sandbox as it is now: processes, memory and files; each copy has its own id, address and disk. " +
			"The original runs on. Copies are deleted when this session ends unless keep is true.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, withSession(s, s.fork))
	addTool(srv, &mcp.Tool{
		Name:        "delete_sandbox",
		Title:       "Delete a sandbox",
		Description: "Stop and delete a sandbox and its disk. This cannot be undone.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, withSession(s, s.delete))
	addTool(srv, &mcp.Tool{
		Name:        "delete_snapshot",
		Title:       "Delete a snapshot",
		Description: "Delete a snapshot. Refused while sandboxes made from it exist.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, withSession(s, s.deleteSnapshot))
}

func (s *Server) create(ctx context.Context, st *session, in createIn) (*mcp.CallToolResult, sandbox, error) {
	if in.FromSnapshot != "" {
		if err := s.snapshotAllowed(in.FromSnapshot); err != nil {
			return nil, sandbox{}, err
		}
		if in.Image != "" || in.VCPUs != 0 || in.MemoryMiB != 0 || in.DiskMiB != 0 {
			return nil, sandbox{}, errors.New("from_snapshot takes the image and sizes from the snapshot: leave image, vcpus, memory_mib and disk_mib out")
		}
	}
	release, err := st.reserve(1, s.cfg.MaxSandboxes)
	if err != nil {
		return nil, sandbox{}, err
	}
	defer release()
	id := in.Name
	if id == "" {
		id = "mcp-" + randomSuffix()
	}
	// Record the sandbox before it exists, so that a server killed during
	// the create still leaves a record for the next one to clean up.
	rec := vmRecord{ID: id, Since: time.Now(), Keep: in.Keep, OwnerPID: s.owner.pid, OwnerStart: s.owner.start}
	if _, ok, _ := s.reg.vm(id); ok {
		// A record under this name: overwriting it with ours, and removing
		// ours if the create fails, must not orphan a sandbox that exists.
		if vm, err := smolvm.FromID(ctx, id, s.opts...); !errors.Is(err, smolvm.ErrNotFound) {
			if vm != nil {
				vm.Close()
			}
			return nil, sandbox{}, fmt.Errorf("a sandbox named %q exists or is being made: pick another name, or leave name out", id)
		}
	}
	if err := s.reg.putVM(rec); err != nil {
		return nil, sandbox{}, err
	}
	opts := append(s.opts[:len(s.opts):len(s.opts)], smolvm.WithID(id))
	var vm *smolvm.VM
	if in.FromSnapshot != "" {
		vm, err = smolvm.FromSnapshot(ctx, in.FromSnapshot, opts...)
	} else {
		opts = append(opts, smolvm.WithCPUs(in.VCPUs), smolvm.WithMemory(in.MemoryMiB), smolvm.WithDisk(in.DiskMiB))
		if in.Image != "" {
			opts = append(opts, smolvm.WithImage(in.Image))
		}
		vm, err = smolvm.Start(ctx, opts...)
	}
	if err != nil {
		s.reg.removeVM(id)
		return nil, sandbox{}, explain(err)
	}
	return nil, s.adopt(ctx, st, vm, in.Keep), nil
}

// adopt records vm as made by the session st. When the session ended
// meanwhile, an unkept vm is deleted at once.
func (s *Server) adopt(ctx context.Context, st *session, vm *smolvm.VM, keep bool) sandbox {
	info := vm.Info()
	rec := vmRecord{ID: vm.ID(), CreatedAt: info.CreatedAt, Since: info.CreatedAt, Keep: keep, OwnerPID: s.owner.pid, OwnerStart: s.owner.start}
	if err := s.reg.putVM(rec); err != nil {
		s.log.Warn("mcp: record sandbox", "vm", vm.ID(), "err", err)
	}
	st.mu.Lock()
	ended := st.ended
	if !ended {
		st.made[vm.ID()] = keep
		st.open[vm.ID()] = vm
	}
	st.mu.Unlock()
	if ended && !keep {
		s.deleteVM(context.WithoutCancel(ctx), vm, vm.ID())
	}
	return describe(info, keep, true)
}

// use returns a handle on the sandbox id if this session may act on it.
// Anything else, also a VM that exists but is out of bounds, is "no such
// sandbox": an agent learns nothing about the user's other VMs.
func (s *Server) use(ctx context.Context, st *session, id string) (*smolvm.VM, error) {
	st.mu.Lock()
	vm := st.open[id]
	st.mu.Unlock()
	if vm != nil {
		if vm.Status() != smolvm.StateDeleted {
			return vm, nil
		}
		s.forget(st, id)
	}
	rec, recorded, err := s.reg.vm(id)
	if err != nil {
		return nil, err
	}
	if !s.cfg.AllVMs && !(recorded && rec.Keep) {
		return nil, noSandbox(id)
	}
	vm, err = smolvm.FromID(ctx, id, s.opts...)
	if errors.Is(err, smolvm.ErrNotFound) {
		if recorded {
			s.reg.removeVM(id)
		}
		return nil, noSandbox(id)
	}
	if err != nil {
		return nil, explain(err)
	}
	if !s.cfg.AllVMs && !recordMatches(rec, vm.Info()) {
		vm.Close()
		return nil, noSandbox(id)
	}
	st.mu.Lock()
	if prev := st.open[id]; prev != nil {
		st.mu.Unlock()
		vm.Close()
		return prev, nil
	}
	st.open[id] = vm
	st.mu.Unlock()
	return vm, nil
}

func (s *Server) forget(st *session, id string) {
	st.mu.Lock()
	if vm := st.open[id]; vm != nil {
		vm.Close()
	}
	delete(st.open, id)
	delete(st.made, id)
	st.mu.Unlock()
}

func noSandbox(id string) error {
	return fmt.Errorf("no sandbox %q that this session may use: list_sandboxes shows the ones it may use, create_sandbox makes one", id)
}

func (s *Server) snapshotAllowed(name string) error {
	if s.cfg.AllVMs {
		return nil
	}
	rec, ok, err := s.reg.snapshot(name)
	if err != nil {
		return err
	}
	if ok {
		info, err := smolvm.GetSnapshot(context.Background(), name, s.opts...)
		if err == nil && info.CreatedAt.Equal(rec.CreatedAt) {
			return nil
		}
		if errors.Is(err, smolvm.ErrNotFound) {
			s.reg.removeSnapshot(name)
		}
	}
	return fmt.Errorf("no snapshot %q that this session may use: snapshot_sandbox makes one, list_sandboxes shows them", name)
}

func (s *Server) run(ctx context.Context, st *session, in runIn) (*mcp.CallToolResult, runOut, error) {
	if strings.TrimSpace(in.Command) == "" {
		return nil, runOut{}, errors.New("command is empty: give a shell command line, such as \"ls -la /\"")
	}
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, runOut{}, err
	}
	if in.TimeoutSeconds <= 0 {
		in.TimeoutSeconds = 60
	}
	timeout := time.Duration(in.TimeoutSeconds * float64(time.Second))
	if timeout > MaxCommandTimeout {
		return nil, runOut{}, fmt.Errorf("timeout_seconds %g is over the limit of %g: start long jobs in the background (nohup CMD >/tmp/log 2>&1 &) and poll", in.TimeoutSeconds, MaxCommandTimeout.Seconds())
	}
	limit := in.MaxOutputBytes
	if limit <= 0 {
		limit = DefaultOutputBytes
	}
	limit = min(limit, MaxOutputBytes)
	stdout, stderr := &cappedBuffer{limit: limit}, &cappedBuffer{limit: limit}
	start := time.Now()
	code, err := vm.Exec(ctx, in.Command, smolvm.ExecOptions{
		Stdin: strings.NewReader(in.Stdin), Stdout: stdout, Stderr: stderr, Timeout: timeout,
	})
	out := runOut{ExitCode: code, DurationSeconds: time.Since(start).Seconds(),
		StdoutBytes: stdout.total, StderrBytes: stderr.total,
		StdoutTruncated: stdout.truncated(), StderrTruncated: stderr.truncated()}
	out.Stdout, out.StdoutBase64 = text(stdout.buf, out.StdoutTruncated)
	out.Stderr, out.StderrBase64 = text(stderr.buf, out.StderrTruncated)
	if out.StdoutTruncated {
		out.Stdout += cutNote(len(stdout.buf), stdout.total, "stdout")
	}
	if out.StderrTruncated {
		out.Stderr += cutNote(len(stderr.buf), stderr.total, "stderr")
	}
	if err != nil {
		if !errors.Is(err, smolvm.ErrTimeout) || ctx.Err() != nil {
			return nil, runOut{}, explain(err)
		}
		// A timeout is a failed call, but what the command printed until
		// then is often what the agent needs to see why.
		out.TimedOut, out.ExitCode = true, -1
		res := &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf(
			"the command timed out after %gs and was killed: raise timeout_seconds (at most %g), or start it in the background (nohup CMD >/tmp/log 2>&1 &) and poll.\n--- stdout so far ---\n%s\n--- stderr so far ---\n%s",
			in.TimeoutSeconds, MaxCommandTimeout.Seconds(), tail(out.Stdout), tail(out.Stderr))}}}
		return res, out, nil
	}
	return nil, out, nil
}

// tail is the end of what a timed-out command printed, for the error
// text; the result's fields hold all that was kept.
func tail(s string) string {
	const n = 4 << 10
	if len(s) <= n {
		return s
	}
	return "[...]" + strings.ToValidUTF8(s[len(s)-n:], "")
}

func (s *Server) writeFile(ctx context.Context, st *session, in writeIn) (*mcp.CallToolResult, writeOut, error) {
	data := []byte(in.Content)
	var err error
	switch in.Encoding {
	case "", "text":
	case "base64":
		if data, err = base64.StdEncoding.DecodeString(strings.TrimSpace(in.Content)); err != nil {
			return nil, writeOut{}, fmt.Errorf("content is not valid base64 (standard alphabet, with padding): %v", err)
		}
	default:
		return nil, writeOut{}, fmt.Errorf("encoding %q: use text or base64", in.Encoding)
	}
	if len(data) > MaxWriteBytes {
		return nil, writeOut{}, fmt.Errorf("content is %d bytes, over the limit of %d: split it, or write parts and join them with run_command (cat a b > c)", len(data), MaxWriteBytes)
	}
	mode := fs.FileMode(0o644)
	if in.Mode != "" {
		m, err := strconv.ParseUint(in.Mode, 8, 32)
		if err != nil || m > 0o777 {
			return nil, writeOut{}, fmt.Errorf("mode %q: give octal permissions such as 0644 or 0755", in.Mode)
		}
		mode = fs.FileMode(m)
	}
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, writeOut{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, fileTimeout)
	defer cancel()
	n, err := vm.WriteFile(ctx, in.Path, bytes.NewReader(data), mode)
	if err != nil {
		return nil, writeOut{}, explain(err)
	}
	return nil, writeOut{Path: in.Path, Bytes: n}, nil
}

func (s *Server) readFile(ctx context.Context, st *session, in readIn) (*mcp.CallToolResult, readOut, error) {
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, readOut{}, err
	}
	limit := in.MaxBytes
	if limit <= 0 {
		limit = DefaultReadBytes
	}
	limit = min(limit, MaxOutputBytes)
	if in.Offset < 0 {
		return nil, readOut{}, fmt.Errorf("offset %d: must be 0 or more", in.Offset)
	}
	ctx, cancel := context.WithTimeout(ctx, fileTimeout)
	defer cancel()
	w := &window{offset: in.Offset, limit: int64(limit)}
	if _, err := vm.ReadFile(ctx, in.Path, w); err != nil && !errors.Is(err, errEnough) {
		return nil, readOut{}, explain(err)
	}
	data, more := w.data()
	out := readOut{Path: in.Path, Offset: in.Offset, Bytes: len(data), Truncated: more}
	out.Content, out.ContentBase64 = text(data, more)
	return nil, out, nil
}

func (s *Server) list(ctx context.Context, st *session, _ listIn) (*mcp.CallToolResult, listOut, error) {
	vms, err := smolvm.List(ctx, s.opts...)
	if err != nil {
		return nil, listOut{}, explain(err)
	}
	st.mu.Lock()
	made := make(map[string]bool, len(st.made))
	for id, keep := range st.made {
		made[id] = keep
	}
	st.mu.Unlock()
	out := listOut{Sandboxes: []sandbox{}, Snapshots: []snapshot{}}
	for _, info := range vms {
		keep, here := made[info.ID]
		if !here {
			rec, ok, _ := s.reg.vm(info.ID)
			mine := ok && rec.Keep && recordMatches(rec, info)
			if !mine && !s.cfg.AllVMs {
				continue
			}
			keep = mine
		}
		out.Sandboxes = append(out.Sandboxes, describe(info, keep, here))
	}
	snaps, err := smolvm.ListSnapshots(ctx, s.opts...)
	if err != nil {
		return nil, listOut{}, explain(err)
	}
	for _, sn := range snaps {
		if sn.Auto {
			continue // Fork's own, gone with its last child
		}
		if !s.cfg.AllVMs {
			rec, ok, _ := s.reg.snapshot(sn.Name)
			if !ok || !rec.CreatedAt.Equal(sn.CreatedAt) {
				continue
			}
		}
		out.Snapshots = append(out.Snapshots, describeSnapshot(&sn))
	}
	return nil, out, nil
}

func (s *Server) snapshot(ctx context.Context, st *session, in snapshotIn) (*mcp.CallToolResult, snapshot, error) {
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, snapshot{}, err
	}
	var opts []smolvm.SnapshotOption
	if in.DiskOnly {
		opts = append(opts, smolvm.DiskOnly())
	}
	info, err := vm.Snapshot(ctx, in.Name, opts...)
	if err != nil {
		return nil, snapshot{}, explain(err)
	}
	if err := s.reg.putSnapshot(snapRecord{Name: info.Name, CreatedAt: info.CreatedAt}); err != nil {
		return nil, snapshot{}, err
	}
	return nil, describeSnapshot(info), nil
}

func (s *Server) fork(ctx context.Context, st *session, in forkIn) (*mcp.CallToolResult, forkOut, error) {
	if in.Count == 0 {
		in.Count = 1
	}
	if in.Count < 1 || in.Count > maxFork {
		return nil, forkOut{}, fmt.Errorf("count %d: fork 1 to %d copies at a time", in.Count, maxFork)
	}
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, forkOut{}, err
	}
	release, err := st.reserve(in.Count, s.cfg.MaxSandboxes)
	if err != nil {
		return nil, forkOut{}, err
	}
	defer release()
	kids, err := vm.Fork(ctx, in.Count)
	if err != nil {
		return nil, forkOut{}, explain(err)
	}
	out := forkOut{Sandboxes: []sandbox{}}
	for _, k := range kids {
		out.Sandboxes = append(out.Sandboxes, s.adopt(ctx, st, k, in.Keep))
	}
	return nil, out, nil
}

func (s *Server) delete(ctx context.Context, st *session, in deleteIn) (*mcp.CallToolResult, deleted, error) {
	vm, err := s.use(ctx, st, in.Sandbox)
	if err != nil {
		return nil, deleted{}, err
	}
	if err := s.deleteVM(context.WithoutCancel(ctx), vm, in.Sandbox); err != nil {
		return nil, deleted{}, explain(err)
	}
	s.forget(st, in.Sandbox)
	return nil, deleted{Deleted: in.Sandbox}, nil
}

func (s *Server) deleteSnapshot(ctx context.Context, st *session, in deleteSnapshotIn) (*mcp.CallToolResult, deleted, error) {
	if err := s.snapshotAllowed(in.Name); err != nil {
		return nil, deleted{}, err
	}
	if err := smolvm.RemoveSnapshot(ctx, in.Name, s.opts...); err != nil {
		return nil, deleted{}, explain(err)
	}
	s.reg.removeSnapshot(in.Name)
	return nil, deleted{Deleted: in.Name}, nil
}

// explain adds to an SDK error what an agent can do about it.
func explain(err error) error {
	var hint string
	switch {
	case errors.Is(err, smolvm.ErrTimeout):
		hint = "it took too long; try again, or with a longer timeout"
	case errors.Is(err, smolvm.ErrNotRunning):
		hint = "the sandbox is not running (list_sandboxes shows its state); delete it and create a new one"
	case errors.Is(err, smolvm.ErrAlreadyExists):
		hint = "the name is taken: pick another, or leave name out for a generated one"
	case errors.Is(err, smolvm.ErrInUse):
		hint = "sandboxes made from it still exist: delete them first"
	case errors.Is(err, fs.ErrNotExist):
		hint = "no such file or directory in the sandbox"
	case errors.Is(err, smolvm.ErrNotFound):
		hint = "list_sandboxes shows what exists"
	case errors.Is(err, smolvm.ErrInvalid):
		return err // a *ValidationError says what to change
	default:
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}
