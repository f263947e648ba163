package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
)

// testGuestFS drives the file routes: each operation, its error codes and
// errnos, and a watch stream.
func testGuestFS(t *testing.T, ctx context.Context, ts *testServer, id string) {
	base := "/v1/vms/" + id + "/files"
	q := func(p string) string { return "?path=" + url.QueryEscape(p) }
	mustExec(t, ctx, ts, id, "mkdir -p /root/fs/full && printf abc > /root/fs/f && touch /root/fs/full/x && ln -s f /root/fs/l")

	r := ts.do(t, ctx, "GET", base+"/stat"+q("/root/fs/l"), nil)
	var fi smolvm.FileInfo
	decodeJSON(t, r, 200, &fi)
	conforms(t, "FileInfo", r.body)
	if fi.Type != "symlink" || fi.Target != "f" {
		t.Errorf("stat of a symlink: %+v", fi)
	}
	r = ts.do(t, ctx, "GET", base+"/list"+q("/root/fs"), nil)
	var l api.FileList
	decodeJSON(t, r, 200, &l)
	conforms(t, "FileList", r.body)
	if len(l.Entries) != 3 || l.Entries[0].Name != "f" || l.Entries[0].Size != 3 || !l.Entries[1].IsDir() {
		t.Errorf("list: %+v", l.Entries)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		code, errno  string
	}{
		{"POST", base + "/mkdir", api.Mkdir{Path: "/root/fs/new/deep", Parents: true, Perm: 0o700}, 204, "", ""},
		{"POST", base + "/mkdir", api.Mkdir{Path: "/root/fs/full"}, 409, api.CodeAlreadyExists, "EEXIST"},
		{"POST", base + "/mkdir", api.Mkdir{Path: "/root/fs/full", Perm: 0o1777}, 400, api.CodeInvalid, ""},
		{"POST", base + "/rename", api.Rename{From: "/root/fs/f", To: "/root/fs/g"}, 204, "", ""},
		{"POST", base + "/rename", api.Rename{From: "/root/fs/nope", To: "/root/fs/g"}, 404, api.CodeNotFound, "ENOENT"},
		{"GET", base + "/stat" + q("/root/fs/nope"), nil, 404, api.CodeNotFound, "ENOENT"},
		{"GET", base + "/list" + q("/root/fs/g"), nil, 400, api.CodeInvalid, "ENOTDIR"},
		{"GET", base + "/stat", nil, 400, api.CodeInvalid, ""},
		{"DELETE", base + q("/root/fs/full"), nil, 409, api.CodeAlreadyExists, "ENOTEMPTY"}, // Go: ENOTEMPTY is fs.ErrExist
		{"DELETE", base + q("/proc/version"), nil, 403, api.CodePermission, "EACCES"},
		{"DELETE", base + q("/root/fs/full") + "&recursive=true", nil, 204, "", ""},
		{"DELETE", base + q("/root/fs/full") + "&recursive=maybe", nil, 400, api.CodeInvalid, ""},
	} {
		r := ts.do(t, ctx, tc.method, tc.path, tc.body)
		if r.status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, r.status, r.body, tc.status)
			continue
		}
		if tc.code != "" {
			e := r.errorBody(t)
			if e.Code != tc.code || (tc.errno != "" && e.Errno != tc.errno && !(tc.errno == "EACCES" && e.Errno == "EPERM")) {
				t.Errorf("%s %s: %+v, want %s %s", tc.method, tc.path, e, tc.code, tc.errno)
			}
		}
	}
	r = ts.do(t, ctx, "GET", base+"/watch"+q("/root/fs/nope"), nil)
	if r.status != 404 || r.errorBody(t).Errno != "ENOENT" {
		t.Errorf("watch of a missing dir: %d %s", r.status, r.body)
	}

	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(wctx, "GET", ts.base+base+"/watch"+q("/root/fs")+"&recursive=true", nil)
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != api.NDJSON {
		t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The stream's header is sent once the watch is set up in the guest.
	mustExec(t, ctx, ts, id, "echo hi > /root/fs/new/deep/w")
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var e api.WatchEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("watch line %q: %v", sc.Text(), err)
		}
		conforms(t, "WatchEvent", sc.Bytes())
		if e.Op == smolvm.WatchCreate && e.Path == "new/deep/w" {
			return
		}
		if strings.Contains(sc.Text(), "error") {
			t.Fatalf("watch: %s", sc.Text())
		}
	}
	t.Fatalf("the watch stream ended without the create: %v", sc.Err())
}
