package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/server"
)

// TestHostileNames: a VM id, snapshot or image name in the path that
// tries to climb out of the state directory (escaped slashes, dot-dot)
// is refused, and nothing is made where it points.
func TestHostileNames(t *testing.T) {
	base := t.TempDir()
	home := filepath.Join(base, "a", "b", "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Home: home, Agent: testEnv.agent})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, 0, l) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	// Each climbs to base/pwned (home is base/a/b/home; snapshots and
	// images live one level below home).
	names := []string{"/../../../../pwned", "../../../../pwned", "./../../../../pwned", "..", "."}
	for _, n := range names {
		esc := url.PathEscape(n)
		js, _ := json.Marshal(n)
		for _, rq := range []struct{ method, path, body string }{
			{"POST", "/v1/vms", `{"from_snapshot":` + string(js) + `}`},
			{"POST", "/v1/vms", `{"id":` + string(js) + `}`},
			{"DELETE", "/v1/snapshots/" + esc, ""},
			{"GET", "/v1/snapshots/" + esc, ""},
			{"DELETE", "/v1/images/" + esc, ""},
			{"GET", "/v1/images/" + esc, ""},
			{"GET", "/v1/vms/" + esc, ""},
			{"DELETE", "/v1/vms/" + esc, ""},
			{"POST", "/v1/vms/" + esc + "/start", ""},
			{"GET", "/v1/vms/" + esc + "/logs", ""},
		} {
			rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
			var body io.Reader
			if rq.body != "" {
				body = strings.NewReader(rq.body)
			}
			req, _ := http.NewRequestWithContext(rctx, rq.method, "http://smolvm"+rq.path, body)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			rcancel()
			if err != nil {
				t.Errorf("%s %s: %v", rq.method, rq.path, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode < 300 {
				t.Errorf("%s %s: %d, want refused", rq.method, rq.path, resp.StatusCode)
			}
			t.Logf("%s %s: %d", rq.method, rq.path, resp.StatusCode)
		}
	}
	filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !isUnder(p, home) {
			t.Errorf("made outside the state directory: %s", p)
		}
		return nil
	})
}

func isUnder(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && filepath.IsLocal(rel)
}
