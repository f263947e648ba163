package mcpserver

import (
	"encoding/base64"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

func TestCappedBuffer(t *testing.T) {
	b := &cappedBuffer{limit: 5}
	for _, p := range []string{"ab", "cdef", "ghij"} {
		if n, err := b.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if string(b.buf) != "abcde" || b.total != 10 || !b.truncated() {
		t.Errorf("got %q total %d truncated %v", b.buf, b.total, b.truncated())
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		cut      bool
		text     string
		hasExact bool
	}{
		{"ascii", "hello", false, "hello", false},
		{"utf8", "héllo ✓", false, "héllo ✓", false},
		{"invalid", "a\xffb", false, "a\uFFFDb", true},
		{"nul is valid", "a\x00b", false, "a\x00b", false},
		{"rune cut at the cap", "ab\xe2\x9c", true, "ab", false},
		{"rune cut, not at the cap", "ab\xe2\x9c", false, "ab\uFFFD\uFFFD", true},
		{"cut after a full rune", "a✓", true, "a✓", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, b64 := text([]byte(tc.in), tc.cut)
			if got != tc.text {
				t.Errorf("text = %q, want %q", got, tc.text)
			}
			if (b64 != "") != tc.hasExact {
				t.Fatalf("base64 = %q, want one: %v", b64, tc.hasExact)
			}
			if b64 != "" {
				if raw, _ := base64.StdEncoding.DecodeString(b64); string(raw) != tc.in {
					t.Errorf("base64 holds %q, want %q", raw, tc.in)
				}
			}
		})
	}
}

func TestWindow(t *testing.T) {
	src := strings.Repeat("0123456789", 1000)
	for _, tc := range []struct {
		offset, limit int64
		want          string
		more          bool
	}{
		{0, 4, "0123", true},
		{5, 3, "567", true},
		{9995, 10, "56789", false},
		{9990, 10, "0123456789", false},
		{20000, 10, "", false},
	} {
		w := &window{offset: tc.offset, limit: tc.limit}
		// Small writes, as a stream delivers them.
		_, err := io.CopyBuffer(w, strings.NewReader(src), make([]byte, 7))
		if err != nil && !errors.Is(err, errEnough) {
			t.Fatal(err)
		}
		got, more := w.data()
		if string(got) != tc.want || more != tc.more {
			t.Errorf("offset %d limit %d: %q more=%v, want %q more=%v", tc.offset, tc.limit, got, more, tc.want, tc.more)
		}
		if tc.more && err == nil {
			t.Errorf("offset %d limit %d: the copy went on to the end", tc.offset, tc.limit)
		}
	}
}

func TestInputSchemaTags(t *testing.T) {
	type good struct {
		N int    `json:"n,omitempty" jsonschema:"a number" schema:"minimum=1,maximum=9,default=3"`
		S string `json:"s" jsonschema:"a string" schema:"enum=a|b,default=a,maxLength=1,pattern=^[ab]$"`
	}
	s, err := inputSchema[good]()
	if err != nil {
		t.Fatal(err)
	}
	n := s.Properties["n"]
	if *n.Minimum != 1 || *n.Maximum != 9 || string(n.Default) != "3" || n.Description != "a number" {
		t.Errorf("n: %+v", n)
	}
	if p := s.Properties["s"]; len(p.Enum) != 2 || string(p.Default) != `"a"` || *p.MaxLength != 1 || p.Pattern != "^[ab]$" {
		t.Errorf("s: %+v", p)
	}
	type bad struct {
		N int `json:"n" schema:"minimun=1"`
	}
	if _, err := inputSchema[bad](); err == nil || !strings.Contains(err.Error(), "minimun") {
		t.Errorf("a misspelt key: %v", err)
	}
}

func TestRegistry(t *testing.T) {
	r := registry{dir: t.TempDir()}
	at := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	if err := r.putVM(vmRecord{ID: "mcp-a", CreatedAt: at, Keep: true}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := r.vm("mcp-a")
	if err != nil || !ok || !rec.CreatedAt.Equal(at) || !rec.Keep {
		t.Fatalf("vm: %+v %v %v", rec, ok, err)
	}
	for _, bad := range []string{"../x", "", "a/b", ".hidden"} {
		if err := r.putVM(vmRecord{ID: bad}); err == nil {
			t.Errorf("stored under %q", bad)
		}
		if _, ok, _ := r.vm(bad); ok {
			t.Errorf("found %q", bad)
		}
	}
	if names := r.names("vms"); len(names) != 1 || names[0] != "mcp-a" {
		t.Errorf("names %v", names)
	}
	r.removeVM("mcp-a")
	if _, ok, _ := r.vm("mcp-a"); ok {
		t.Error("still there after remove")
	}
}

func TestRecordMatches(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rec  vmRecord
		vm   time.Time
		want bool
	}{
		{"same VM", vmRecord{CreatedAt: t0}, t0, true},
		{"name reused", vmRecord{CreatedAt: t0}, t0.Add(time.Nanosecond), false},
		{"provisional, VM made after", vmRecord{Since: t0}, t0.Add(time.Second), true},
		{"provisional, VM older (the user's)", vmRecord{Since: t0}, t0.Add(-time.Second), false},
		{"no times at all", vmRecord{}, t0, false},
	} {
		if got := recordMatches(tc.rec, smolvm.VMInfo{CreatedAt: tc.vm}); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTail(t *testing.T) {
	long := strings.Repeat("x", 10000) + "END"
	if got := tail(long); !strings.HasPrefix(got, "[...]") || !strings.HasSuffix(got, "END") || len(got) > 5000 {
		t.Errorf("tail of a long output: %d bytes", len(got))
	}
	if got := tail("short"); got != "short" {
		t.Errorf("tail(short) = %q", got)
	}
}

func TestOwnerAlive(t *testing.T) {
	state, start, err := procStat(os.Getpid())
	if err != nil || state == 'Z' {
		t.Fatalf("procStat(self) = %c, %d, %v", state, start, err)
	}
	if !(owner{pid: os.Getpid(), start: start}).alive() {
		t.Error("this process is not alive")
	}
	if (owner{pid: os.Getpid(), start: start + 1}).alive() {
		t.Error("a reused PID (other start time) counts as alive")
	}
	// A zombie: exited, not yet reaped.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_, zstart, _ := procStat(cmd.Process.Pid)
	for range 100 {
		if st, _, _ := procStat(cmd.Process.Pid); st == 'Z' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if (owner{pid: cmd.Process.Pid, start: zstart}).alive() {
		t.Error("a zombie counts as alive")
	}
	cmd.Wait()
}
