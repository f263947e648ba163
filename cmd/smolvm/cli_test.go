package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

func TestShellJoin(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"uname -a | tr a-z A-Z"}, "uname -a | tr a-z A-Z"},
		{[]string{"echo", "hi"}, "echo hi"},
		{[]string{"sh", "-c", "echo $HOME"}, "sh -c 'echo $HOME'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"printf", "%s\n", ""}, `printf '%s` + "\n" + `' ''`},
		{[]string{"ls", "-la", "/tmp/a.b_c-d", "x=y"}, "ls -la /tmp/a.b_c-d x=y"},
		{[]string{"A=1", "env"}, "'A=1' env"},
		{[]string{"echo", "*", "~", "a b", "$(id)", "`id`", ";", "&&"}, "echo '*' '~' 'a b' '$(id)' '`id`' ';' '&&'"},
	}
	for _, tt := range tests {
		if got := shellJoin(tt.args); got != tt.want {
			t.Errorf("shellJoin(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		in      []string
		want    map[string]string
		wantErr bool
	}{
		{nil, nil, false},
		{[]string{"A=1", "B=x=y", "C="}, map[string]string{"A": "1", "B": "x=y", "C": ""}, false},
		{[]string{"A=1", "A=2"}, map[string]string{"A": "2"}, false},
		{[]string{"NOVALUE"}, nil, true},
		{[]string{"=v"}, nil, true},
		{[]string{"1A=v"}, nil, true},
		{[]string{"A-B=v"}, nil, true},
		{[]string{"A B=v"}, nil, true},
	}
	for _, tt := range tests {
		got, err := parseEnv(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseEnv(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err != nil && !errors.Is(err, smolvm.ErrInvalid) {
			t.Errorf("parseEnv(%q) error %v does not match ErrInvalid", tt.in, err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseEnv(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestVMFlags(t *testing.T) {
	tests := []struct {
		args    []string
		want    smolvm.VMConfig
		wantErr bool
	}{
		// No flags leave every size to the SDK, as a library user's zero
		// VMConfig does: an image bigger than the default disk keeps its size.
		{nil, smolvm.VMConfig{}, false},
		{
			[]string{"--cpus", "2", "--memory=1024", "--disk", "2048", "-e", "A=1", "--env", "B=a,b", "--image", "dev", "--boot-timeout", "90s"},
			smolvm.VMConfig{VCPUs: 2, MemoryMiB: 1024, DiskMiB: 2048, Image: "dev", BootTimeout: 90 * time.Second, Env: map[string]string{"A": "1", "B": "a,b"}},
			false,
		},
		{[]string{"--boot-timeout", "30"}, smolvm.VMConfig{BootTimeout: 30 * time.Second}, false},
		// Negative sizes pass through: VMConfig.Validate refuses them.
		{[]string{"--memory", "-1", "--cpus", "-2", "--disk", "-3"}, smolvm.VMConfig{VCPUs: -2, MemoryMiB: -1, DiskMiB: -3}, false},
		{[]string{"--env", "oops"}, smolvm.VMConfig{}, true},
		{[]string{"--env", "1A=x"}, smolvm.VMConfig{}, true},
		{[]string{"--memory", "lots"}, smolvm.VMConfig{}, true},
		{[]string{"--boot-timeout", "-5s"}, smolvm.VMConfig{}, true},
	}
	for _, tt := range tests {
		var f vmFlags
		cmd := &cobra.Command{}
		f.register(cmd)
		err := cmd.ParseFlags(tt.args)
		var got smolvm.VMConfig
		if err == nil {
			got, err = f.config()
		}
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: error = %v, want error %v", tt.args, err, tt.wantErr)
			continue
		}
		if err == nil && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: config = %+v, want %+v", tt.args, got, tt.want)
		}
	}
}

// TestCommandArgs checks where flags end and the guest command begins.
func TestCommandArgs(t *testing.T) {
	g := &globalOptions{}
	tests := []struct {
		cmd      *cobra.Command
		args     []string
		wantArgs []string
		flag     string
		flagVal  string
	}{
		{newRunCmd(g), []string{"--memory", "256", "--", "sh", "-c", "echo $HOME"}, []string{"sh", "-c", "echo $HOME"}, "memory", "256"},
		{newRunCmd(g), []string{"--timeout", "5s", "ls", "-la"}, []string{"ls", "-la"}, "timeout", "5s"},
		{newRunCmd(g), []string{"-i", "cat", "--memory", "1"}, []string{"cat", "--memory", "1"}, "interactive", "true"},
		{newExecCmd(g), []string{"web", "--timeout", "2s", "-e", "A=1", "--", "ls", "-la"}, []string{"web", "ls", "-la"}, "timeout", "2s"},
		{newStopCmd(g), []string{"web", "--timeout", "10s"}, []string{"web"}, "timeout", "10s"},
		{newStopCmd(g), []string{"web", "--timeout", "10"}, []string{"web"}, "timeout", "10s"},
		{newExecCmd(g), []string{"web", "--timeout", "1", "--", "ls"}, []string{"web", "ls"}, "timeout", "1s"},
		{newExecCmd(g), []string{"web", "--timeout", "1.5s", "--", "ls"}, []string{"web", "ls"}, "timeout", "1.5s"},
		{newRunCmd(g), []string{"--timeout", "2m", "ls"}, []string{"ls"}, "timeout", "2m0s"},
		{newExecCmd(g), []string{"--argv", "web", "--cwd", "/tmp", "--", "ls", "--cwd"}, []string{"web", "ls", "--cwd"}, "cwd", "/tmp"},
		{newExecCmd(g), []string{"-d", "web", "-u", "nobody", "--", "sleep", "9"}, []string{"web", "sleep", "9"}, "detach", "true"},
		{newKillCmd(g), []string{"web", "p1", "-s", "KILL"}, []string{"web", "p1"}, "signal", "KILL"},
	}
	for _, tt := range tests {
		if err := tt.cmd.ParseFlags(tt.args); err != nil {
			t.Errorf("%s %q: %v", tt.cmd.Name(), tt.args, err)
			continue
		}
		if got := tt.cmd.Flags().Args(); !reflect.DeepEqual(got, tt.wantArgs) {
			t.Errorf("%s %q: args = %q, want %q", tt.cmd.Name(), tt.args, got, tt.wantArgs)
		}
		if got := tt.cmd.Flags().Lookup(tt.flag).Value.String(); got != tt.flagVal {
			t.Errorf("%s %q: --%s = %q, want %q", tt.cmd.Name(), tt.args, tt.flag, got, tt.flagVal)
		}
	}
}

func TestErrorKind(t *testing.T) {
	tests := []struct {
		err  error
		kind string
		code int
	}{
		{fmt.Errorf("x: %w", smolvm.ErrInvalid), "invalid", 1},
		{&smolvm.ValidationError{Field: "memory"}, "invalid", 1},
		{errors.Join(&smolvm.ValidationError{Field: "a"}, &smolvm.ValidationError{Field: "b"}), "invalid", 1},
		{usagef("bad"), "invalid", 1},
		{&smolvm.Error{Op: "open", VM: "x", Err: smolvm.ErrNotFound}, "not_found", 1},
		{fmt.Errorf("%w: pick another", smolvm.ErrAlreadyExists), "already_exists", 1},
		{fmt.Errorf("%w (state stopped)", smolvm.ErrNotRunning), "not_running", 1},
		{&smolvm.TimeoutError{Op: "run", VM: "x"}, "timeout", 124},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), "timeout", 124},
		{errors.New("boom"), "error", 1},
		{exitCodeError{3}, "error", 3},
		{fmt.Errorf("%w: delete them first", smolvm.ErrInUse), "in_use", 1},
		{fmt.Errorf("%w: p1", smolvm.ErrProcessExited), "process_exited", 1},
	}
	for _, tt := range tests {
		if got := errorKind(tt.err); got != tt.kind {
			t.Errorf("errorKind(%v) = %q, want %q", tt.err, got, tt.kind)
		}
		if got := exitStatus(tt.err); got != tt.code {
			t.Errorf("exitStatus(%v) = %d, want %d", tt.err, got, tt.code)
		}
	}
}

func TestSSHArgv(t *testing.T) {
	running := func(addr string) smolvm.VMInfo {
		return smolvm.VMInfo{ID: "web", State: smolvm.StateRunning, DataDir: "/s/vms/web", Network: smolvm.NetworkInfo{SSHAddr: addr}}
	}
	base := []string{"ssh", "-i", "/s/vms/web/id_ed25519", "-o", "UserKnownHostsFile=/s/vms/web/known_hosts", "-o", "IdentitiesOnly=yes"}
	tests := []struct {
		info    smolvm.VMInfo
		want    []string
		wantErr error
	}{
		{running("172.29.0.2:22"), append(base[:len(base):len(base)], "root@172.29.0.2"), nil},
		{running("127.0.0.1:40123"), append(base[:len(base):len(base)], "-p", "40123", "root@127.0.0.1"), nil},
		{smolvm.VMInfo{ID: "web", State: smolvm.StateStopped, Network: smolvm.NetworkInfo{SSHAddr: "172.29.0.2:22"}}, nil, smolvm.ErrNotRunning},
	}
	for _, tt := range tests {
		got, err := sshArgv(tt.info)
		if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
			t.Errorf("sshArgv(%+v) error = %v, want %v", tt.info, err, tt.wantErr)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("sshArgv(%+v) = %q, want %q", tt.info, got, tt.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	vms := []smolvm.VMInfo{
		{ID: "web", State: smolvm.StateRunning, CreatedAt: now.Add(-90 * time.Second),
			Config:  smolvm.VMConfig{VCPUs: 2, MemoryMiB: 1024, DiskMiB: 512},
			Network: smolvm.NetworkInfo{Mode: "tap", GuestIP: "172.29.0.2/30"}},
		{ID: "db", State: smolvm.StateStopped, CreatedAt: now.Add(-50 * time.Hour),
			Config:  smolvm.VMConfig{VCPUs: 1, MemoryMiB: 512, DiskMiB: 4096},
			Network: smolvm.NetworkInfo{Mode: "user", GuestIP: "10.0.2.15/24"}},
	}
	var b bytes.Buffer
	if err := writeTable(&b, vms, now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID    STATE     IP           CPUS   MEM     DISK    CREATED\n" +
		"web   running   172.29.0.2   2      1024M   512M    1m ago\n" +
		"db    stopped   127.0.0.1    1      512M    4096M   2d ago\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestJSONLines(t *testing.T) {
	var b bytes.Buffer
	j := &jsonLines{w: &b}
	j.Write([]byte("one\r\ntw"))
	j.Write([]byte("o\nthree"))
	j.flush()
	want := `{"line":"one"}` + "\n" + `{"line":"two"}` + "\n" + `{"line":"three"}` + "\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// run runs the CLI in this process, as main does.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestJSONErrors checks the shape of errors in --json mode; none of these
// boots a VM.
func TestJSONErrors(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		args []string
		kind string
	}{
		{[]string{"info", "nosuch"}, "not_found"},
		{[]string{"stop", "nosuch"}, "not_found"},
		{[]string{"exec", "nosuch", "--", "true"}, "not_found"},
		{[]string{"ssh", "nosuch", "--print"}, "not_found"},
		{[]string{"env", "list", "nosuch"}, "not_found"},
		{[]string{"delete", "nosuch"}, "not_found"},
		{[]string{"delete"}, "invalid"},
		{[]string{"delete", "--all", "x"}, "invalid"},
		{[]string{"run"}, "invalid"},
		{[]string{"exec", "x"}, "invalid"},
		{[]string{"env", "set", "x"}, "invalid"},
		{[]string{"env", "set", "x", "NOVALUE"}, "invalid"},
		{[]string{"create", "--memory", "1"}, "invalid"},
		{[]string{"create", "--name", "bad name"}, "invalid"},
		{[]string{"create", "--env", "oops"}, "invalid"},
		{[]string{"list", "--bogus"}, "invalid"},
		{[]string{"list", "extra"}, "invalid"},
		{[]string{"bogus"}, "invalid"},
		{[]string{"--network", "wifi", "list"}, "invalid"},
		{[]string{"ssh", "x"}, "invalid"}, // interactive shell has no JSON
		// Bad sizes and timeouts are refused before anything is made.
		{[]string{"create", "--memory", "-1"}, "invalid"},
		{[]string{"create", "--cpus", "-1"}, "invalid"},
		{[]string{"create", "--disk", "-1"}, "invalid"},
		{[]string{"create", "--cpus", "100000"}, "invalid"},
		{[]string{"create", "--memory", "100000000"}, "invalid"},
		{[]string{"create", "--disk", "100000000"}, "invalid"},
		{[]string{"create", "--boot-timeout", "-1"}, "invalid"},
		{[]string{"create", "--boot-timeout", "soon"}, "invalid"},
		{[]string{"run", "--memory", "-1", "--", "true"}, "invalid"},
		{[]string{"run", "--timeout", "-1", "--", "true"}, "invalid"},
		{[]string{"stop", "x", "--timeout", "-1"}, "invalid"},
		{[]string{"exec", "x", "--timeout", "-1", "--", "true"}, "invalid"},
		{[]string{"exec", "x", "--timeout", "1x", "--", "true"}, "invalid"},
		{[]string{"exec", "x", "-e", "1A=x", "--", "true"}, "invalid"},
		{[]string{"exec", "x", "-e", "A-B=x", "--", "true"}, "invalid"},
		{[]string{"env", "set", "x", "A-B=x"}, "invalid"},
		{[]string{"env", "unset", "x", "A-B"}, "invalid"},
		{[]string{"port", "close", "x", "80:"}, "invalid"},
		{[]string{"snapshot", "inspect", "nosuch"}, "not_found"},
		{[]string{"snapshot", "rm", "nosuch"}, "not_found"},
		{[]string{"snapshot", "create", "nosuch", "s"}, "not_found"},
		{[]string{"snapshot", "create", "x"}, "invalid"},
		{[]string{"snapshot", "inspect"}, "invalid"},
		{[]string{"snapshot", "rm"}, "invalid"},
		{[]string{"snapshot", "list", "extra"}, "invalid"},
		{[]string{"fork", "nosuch"}, "not_found"},
		{[]string{"fork", "x", "-n", "0"}, "invalid"},
		{[]string{"fork"}, "invalid"},
		{[]string{"create", "--from-snapshot", "nosuch"}, "not_found"},
		{[]string{"create", "--from-snapshot", "s", "--cpus", "2"}, "invalid"},
		{[]string{"create", "--from-snapshot", "s", "--no-start"}, "invalid"},
		{[]string{"create", "--from-snapshot", "s", "--mount", "/tmp"}, "invalid"},
		{[]string{"run", "--from-snapshot", "s", "--image", "x", "--", "true"}, "invalid"},
		{[]string{"run", "--from-snapshot", "nosuch", "--", "true"}, "not_found"},
	}
	for _, tt := range tests {
		args := append([]string{"--json", "--home", home}, tt.args...)
		stdout, _, code := runCLI(t, args...)
		if code != 1 {
			t.Errorf("%q: exit code %d, want 1", tt.args, code)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(stdout), &got); err != nil {
			t.Errorf("%q: stdout is not a JSON object: %v\n%s", tt.args, err, stdout)
			continue
		}
		if msg, _ := got["error"].(string); msg == "" || got["kind"] != tt.kind || len(got) != 2 {
			t.Errorf("%q: got %v, want {error: ..., kind: %q}", tt.args, got, tt.kind)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "vms")); len(ents) != 0 {
		t.Errorf("bad input left VM directories: %v", ents)
	}
}

func TestTextErrors(t *testing.T) {
	home := t.TempDir()
	stdout, stderr, code := runCLI(t, "--home", home, "info", "nosuch")
	if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "smolvm: ") || !strings.Contains(stderr, "not found") {
		t.Errorf("info nosuch: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	_, stderr, code = runCLI(t, "--home", home, "delete")
	if code != 1 || !strings.Contains(stderr, "smolvm delete --help") {
		t.Errorf("delete: code %d, stderr %q; want a usage hint", code, stderr)
	}
}

func TestListEmpty(t *testing.T) {
	home := t.TempDir()
	stdout, stderr, code := runCLI(t, "--json", "--home", home, "list")
	if code != 0 || strings.TrimSpace(stdout) != "[]" {
		t.Errorf("list --json: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, _, code = runCLI(t, "--home", home, "list")
	if code != 0 || !strings.HasPrefix(stdout, "ID") {
		t.Errorf("list: code %d, stdout %q", code, stdout)
	}
	// ps without a VM id is list, as when it was list's alias.
	stdout, stderr, code = runCLI(t, "--json", "--home", home, "ps")
	if code != 0 || strings.TrimSpace(stdout) != "[]" {
		t.Errorf("ps --json: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "--json", "--home", home, "snapshot", "list")
	if code != 0 || strings.TrimSpace(stdout) != "[]" {
		t.Errorf("snapshot list --json: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, _, code = runCLI(t, "--home", home, "snapshot", "list")
	if code != 0 || !strings.HasPrefix(stdout, "NAME") {
		t.Errorf("snapshot list: code %d, stdout %q", code, stdout)
	}
}

func TestDoctorJSON(t *testing.T) {
	stdout, stderr, code := runCLI(t, "--json", "--home", t.TempDir(), "doctor")
	var report struct {
		Checks    []smolvm.Check    `json:"checks"`
		Leftovers []smolvm.Leftover `json:"leftovers"`
	}
	if err := json.Unmarshal([]byte(stdout), &report); err != nil || report.Leftovers == nil {
		t.Fatalf("doctor --json: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	checks := report.Checks
	if len(checks) == 0 {
		t.Fatal("doctor --json: no checks")
	}
	wantCode := 0
	for _, c := range checks {
		if c.Name == "" || c.Detail == "" {
			t.Errorf("check without name or detail: %+v", c)
		}
		if !c.OK && !c.Optional {
			wantCode = 1
		}
	}
	if code != wantCode {
		t.Errorf("doctor exit code %d, want %d for %+v", code, wantCode, checks)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		stdout, stderr, code := runCLI(t, "completion", shell)
		if code != 0 || !strings.Contains(stdout, "smolvm") {
			t.Errorf("completion %s: code %d, %d bytes, stderr %q", shell, code, len(stdout), stderr)
		}
	}
}

func TestParseSeconds(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"1", time.Second, true},
		{"30", 30 * time.Second, true},
		{"1.5", 1500 * time.Millisecond, true},
		{"1.5s", 1500 * time.Millisecond, true},
		{"2m", 2 * time.Minute, true},
		{"100ms", 100 * time.Millisecond, true},
		{"-1", 0, false},
		{"-1s", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{"1x", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"1e300", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSeconds(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSeconds(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestTimeoutHelp checks that every timeout flag says what a plain number
// means and what 0 does.
func TestTimeoutHelp(t *testing.T) {
	g := &globalOptions{}
	for _, c := range []struct {
		cmd  *cobra.Command
		flag string
	}{{newExecCmd(g), "timeout"}, {newRunCmd(g), "timeout"}, {newStopCmd(g), "timeout"}, {newRunCmd(g), "boot-timeout"}, {newCreateCmd(g), "boot-timeout"}} {
		f := c.cmd.Flags().Lookup(c.flag)
		if f == nil || !strings.Contains(f.Usage, "seconds, or a duration such as 1.5s or 2m") || !strings.Contains(f.Usage, "0 = ") {
			t.Errorf("%s --%s: usage %q", c.cmd.Name(), c.flag, f.Usage)
		}
	}
}

func TestEncodeOutput(t *testing.T) {
	random := make([]byte, 256)
	rand.Read(random)
	for _, b := range [][]byte{nil, []byte("text\n"), []byte("héllo ✓"), random, {0xff}, {'a', 0}} {
		r := newExecResult("x", 0, b, b)
		var buf bytes.Buffer
		if err := writeJSON(&buf, r); err != nil {
			t.Fatal(err)
		}
		var back execResult
		if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
			t.Fatal(err)
		}
		for _, got := range []struct {
			text *string
			b64  string
		}{{back.Stdout, back.StdoutB64}, {back.Stderr, back.StderrB64}} {
			dec, err := decodeOutput(got.text, got.b64)
			if err != nil || !bytes.Equal(dec, b) {
				t.Errorf("%q: round trip through JSON gave %q, %v\n%s", b, dec, err, buf.String())
			}
			if (got.text == nil) == utf8.Valid(b) {
				t.Errorf("%q: text %v, b64 %q; want text exactly for valid UTF-8", b, got.text, got.b64)
			}
		}
	}
}

// decodeOutput is encodeOutput's inverse, as a JSON reader does it.
func decodeOutput(text *string, b64 string) ([]byte, error) {
	if text != nil {
		return []byte(*text), nil
	}
	return base64.StdEncoding.DecodeString(b64)
}
