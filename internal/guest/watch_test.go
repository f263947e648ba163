package guest

import (
	"bytes"
	"errors"
	"io/fs"
	"strings"
	"testing"
)

// The agent's stream is the guest's: every line is crafted input.
func TestWatchParserHostile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		ok    bool
	}{
		{"create", `{"op":"create","path":"a/b"}` + "\n", true},
		{"rename", `{"op":"rename","path":"b","old":"a"}` + "\n", true},
		{"root removed", `{"op":"remove","path":".","dir":true}` + "\n", true},
		{"absolute path", `{"op":"create","path":"/etc/passwd"}` + "\n", false},
		{"dot dot", `{"op":"create","path":"../x"}` + "\n", false},
		{"inner dot dot", `{"op":"modify","path":"a/../../x"}` + "\n", false},
		{"NUL", `{"op":"create","path":"a\u0000b"}` + "\n", false},
		{"empty path", `{"op":"create","path":""}` + "\n", false},
		{"rename from outside", `{"op":"rename","path":"b","old":"../a"}` + "\n", false},
		{"old on create", `{"op":"create","path":"b","old":"a"}` + "\n", false},
		{"unknown op", `{"op":"chmod","path":"a"}` + "\n", false},
		{"unknown field", `{"op":"create","path":"a","x":1}` + "\n", false},
		{"host's dropped count", `{"op":"overflow","dropped":5}` + "\n", false},
		{"not JSON", "hello\n", false},
		{"line bomb", strings.Repeat("x", MaxWatchLine+1), false},
		{"line bomb in pieces", strings.Repeat(`{"op":"create","path":"`, 2000), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewWatchParser(10, nil)
			// Written in small pieces, as a stream arrives.
			var err error
			for b := []byte(tc.input); len(b) > 0 && err == nil; {
				n := min(len(b), 700)
				_, err = p.Write(b[:n])
				b = b[n:]
			}
			if tc.ok && (err != nil || len(p.Events()) != 1) {
				t.Fatalf("refused: %v (%d events)", err, len(p.Events()))
			}
			if !tc.ok && (!errors.Is(err, ErrUnsafe) || len(p.Events()) != 0) {
				t.Fatalf("taken: %v (%d events), want ErrUnsafe", err, len(p.Events()))
			}
			if !tc.ok && len(p.line) > MaxWatchLine {
				t.Fatalf("held %d bytes of one line", len(p.line))
			}
		})
	}
}

func TestWatchParserOverflow(t *testing.T) {
	p := NewWatchParser(4, nil)
	line := []byte(`{"op":"create","path":"f"}` + "\n")
	if _, err := p.Write(bytes.Repeat(line, 100)); err != nil {
		t.Fatal(err)
	}
	if len(p.Events()) != 4 {
		t.Fatalf("%d queued, want the queue's 4", len(p.Events()))
	}
	for range 4 {
		<-p.Events()
	}
	p.Write(line)
	if e := <-p.Events(); e.Op != "overflow" || e.Dropped != 96 {
		t.Fatalf("after draining: %+v, want an overflow of 96", e)
	}
	if e := <-p.Events(); e.Op != "create" {
		t.Fatalf("then %+v, want the create", e)
	}
}

func TestWatchParserAgentError(t *testing.T) {
	p := NewWatchParser(4, nil)
	_, err := p.Write([]byte(`{"op":"error","errno":"ENOENT","message":"watch /x: no such file"}` + "\n"))
	var pe *pathErr
	if !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%v, want the errno", err)
	}
}

// A listing is the guest's word: names and targets no directory can hold
// are refused.
func TestCheckEntry(t *testing.T) {
	ok := FSEntry{Name: "a", Type: "file", Size: 1, Perm: 0o644}
	for _, tc := range []struct {
		name string
		e    FSEntry
		ok   bool
	}{
		{"file", ok, true},
		{"symlink", FSEntry{Name: "l", Type: "symlink", Target: "../x"}, true},
		{"slash", FSEntry{Name: "a/b", Type: "file"}, false},
		{"dot dot", FSEntry{Name: "..", Type: "dir"}, false},
		{"dot", FSEntry{Name: ".", Type: "dir"}, false},
		{"empty", FSEntry{Name: "", Type: "dir"}, false},
		{"NUL", FSEntry{Name: "a\x00", Type: "file"}, false},
		{"long name", FSEntry{Name: strings.Repeat("n", 256), Type: "file"}, false},
		{"huge target", FSEntry{Name: "l", Type: "symlink", Target: strings.Repeat("t", 1<<20)}, false},
		{"NUL target", FSEntry{Name: "l", Type: "symlink", Target: "a\x00"}, false},
		{"target on a file", FSEntry{Name: "f", Type: "file", Target: "x"}, false},
		{"negative size", FSEntry{Name: "f", Type: "file", Size: -1}, false},
		{"setuid", FSEntry{Name: "f", Type: "file", Perm: 0o4755}, false},
		{"unknown type", FSEntry{Name: "f", Type: "door"}, false},
	} {
		err := checkEntry(tc.e, true)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrUnsafe)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestFSError(t *testing.T) {
	for errno, want := range map[string]error{"ENOENT": fs.ErrNotExist, "EEXIST": fs.ErrExist, "EACCES": fs.ErrPermission, "EPERM": fs.ErrPermission} {
		if err := fsError("stat", "/x", errno, ""); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", errno, err, want)
		}
	}
	err := fsError("stat", "/x", "EBOGUS", strings.Repeat("m", 10000))
	if len(err.Error()) > 300 {
		t.Errorf("an unknown errno's message is kept whole: %d bytes", len(err.Error()))
	}
}
