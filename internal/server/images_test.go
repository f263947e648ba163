package server_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// TestImages builds an image through the API (progress events, then the
// result), inspects, lists and removes it.
func TestImages(t *testing.T) {
	requireVM(t) // the Alpine source
	home := t.TempDir()
	ts := startServer(t, server.Config{Home: home})
	ctx := testContext(t, 5*time.Minute)
	r := ts.do(t, ctx, "POST", "/v1/images", api.BuildImage{Name: "apitest", From: "alpine", SizeMiB: 128})
	if r.status != 200 || r.header.Get("Content-Type") != api.NDJSON {
		t.Fatalf("build: %d %s", r.status, r.body)
	}
	lines := bytes.Split(bytes.TrimSpace(r.body), []byte("\n"))
	var last api.Event
	for _, l := range lines {
		conforms(t, "Event", l)
		json.Unmarshal(l, &last)
	}
	if last.Type != "result" || last.Image == nil || last.Image.Name != "apitest" {
		t.Fatalf("last event %s", lines[len(lines)-1])
	}
	if len(lines) < 2 {
		t.Errorf("no progress events before the result: %s", r.body)
	}
	var img image.Image
	r = ts.do(t, ctx, "GET", "/v1/images/apitest", nil)
	decodeJSON(t, r, 200, &img)
	conforms(t, "Image", r.body)
	var l api.ImageList
	r = ts.do(t, ctx, "GET", "/v1/images", nil)
	decodeJSON(t, r, 200, &l)
	conforms(t, "ImageList", r.body)
	if len(l.Images) != 1 || l.Images[0].Name != "apitest" {
		t.Errorf("images %+v", l.Images)
	}
	if r := ts.do(t, ctx, "DELETE", "/v1/images/apitest", nil); r.status != 204 {
		t.Errorf("rm: %d %s", r.status, r.body)
	}
	if r := ts.do(t, ctx, "GET", "/v1/images/apitest", nil); r.status != 404 {
		t.Errorf("after rm: %d %s", r.status, r.body)
	}

	r = ts.do(t, ctx, "POST", "/v1/images", api.BuildImage{Name: "bad", From: "floppy:disk"})
	json.Unmarshal(bytes.TrimSpace(r.body), &last)
	if last.Type != "error" || last.Error == nil || last.Error.Code != api.CodeInvalid {
		t.Errorf("bad source: %s", r.body)
	}
}
