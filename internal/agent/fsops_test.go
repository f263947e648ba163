package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fsCall(t *testing.T, req fsRequest) fsReply {
	t.Helper()
	b, _ := json.Marshal(req)
	return serveFS(strings.NewReader(string(b)))
}

// The errno names are the host's contract: it matches them, never the
// message.
func TestServeFS(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "full"), 0o755)
	os.WriteFile(filepath.Join(dir, "full", "x"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "f"), []byte("abc"), 0o640)
	os.Symlink("f", filepath.Join(dir, "l"))
	for _, tc := range []struct {
		name  string
		req   fsRequest
		errno string
	}{
		{"stat", fsRequest{Op: "stat", Path: filepath.Join(dir, "l")}, ""},
		{"stat missing", fsRequest{Op: "stat", Path: filepath.Join(dir, "nope")}, "ENOENT"},
		{"list a file", fsRequest{Op: "list", Path: filepath.Join(dir, "f")}, "ENOTDIR"},
		{"list over max", fsRequest{Op: "list", Path: dir, Max: 2}, "E2BIG"},
		{"mkdir exists", fsRequest{Op: "mkdir", Path: filepath.Join(dir, "full")}, "EEXIST"},
		{"mkdir -p over a file", fsRequest{Op: "mkdir", Path: filepath.Join(dir, "f", "x"), Parents: true}, "ENOTDIR"},
		{"remove full", fsRequest{Op: "remove", Path: filepath.Join(dir, "full")}, "ENOTEMPTY"},
		{"remove -r missing", fsRequest{Op: "remove", Path: filepath.Join(dir, "nope"), Recursive: true}, "ENOENT"},
		{"rename missing", fsRequest{Op: "rename", Path: filepath.Join(dir, "nope"), To: filepath.Join(dir, "x")}, "ENOENT"},
		{"relative", fsRequest{Op: "stat", Path: "f"}, "EINVAL"},
		{"unknown op", fsRequest{Op: "chmod", Path: dir}, "EINVAL"},
		{"remove -r", fsRequest{Op: "remove", Path: filepath.Join(dir, "full"), Recursive: true}, ""},
	} {
		r := fsCall(t, tc.req)
		got := ""
		if r.Error != nil {
			got = r.Error.Errno
		}
		if got != tc.errno {
			t.Errorf("%s: errno %q (%+v), want %q", tc.name, got, r.Error, tc.errno)
		}
	}
	r := fsCall(t, fsRequest{Op: "list", Path: dir})
	if len(r.Entries) != 2 {
		t.Fatalf("list: %+v", r)
	}
	for _, e := range r.Entries {
		if e.Name == "l" && (e.Type != "symlink" || e.Target != "f") || e.Name == "f" && (e.Type != "file" || e.Size != 3 || e.Perm != 0o640) {
			t.Errorf("entry %+v", e)
		}
	}
	if r := serveFS(strings.NewReader(strings.Repeat(" ", maxFSRequest+1))); r.Error == nil {
		t.Error("an oversized request was taken")
	}
}
