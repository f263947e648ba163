package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/api"
	"github.com/smolvm/smolvm/internal/server"
)

// testExecSecrets: a secret in an exec body reaches the command and is
// in no answer but the command's own output; bad names are refused.
func testExecSecrets(t *testing.T, ctx context.Context, ts *testServer, id string) {
	res, r := execJSON(t, ctx, ts, id, api.Exec{Cmd: `echo "$API_SECRET"`, Secrets: map[string]string{"API_SECRET": "s3cr3t-api-31"}})
	if r.status != 200 || str(res.Stdout) != "s3cr3t-api-31\n" {
		t.Errorf("exec with a secret: %d %s", r.status, r.body)
	}
	r = ts.do(t, ctx, "POST", "/v1/vms/"+id+"/exec", api.Exec{Cmd: "true", Secrets: map[string]string{"A-B": "s3cr3t-api-32"}})
	if r.status != 400 || strings.Contains(string(r.body), "s3cr3t") {
		t.Errorf("bad secret name: %d %s", r.status, r.body)
	}
}

// TestLifetimeAPI: labels and a lifetime at create, the list's label
// filter and the ttl route, on VMs that are only created.
func TestLifetimeAPI(t *testing.T) {
	requireVM(t)
	ts := startServer(t, server.Config{})
	ctx := testContext(t, 2*time.Minute)
	for _, id := range []string{"api-life1", "api-life2"} {
		t.Cleanup(func() { deleteVM(t, id) })
	}
	var info smolvm.VMInfo
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: "api-life1", Cold: true,
		Labels: map[string]string{"suite": "api-life", "role": "web"}, TTLSeconds: 600, OnExpire: "delete"}), 201, &info)
	if info.Config.Labels["role"] != "web" || info.Config.OnExpire != "delete" || time.Until(info.Config.ExpiresAt) < 9*time.Minute {
		t.Errorf("created with %+v", info.Config)
	}
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: "api-life2", Cold: true,
		Labels: map[string]string{"suite": "api-life", "role": "db"}}), 201, &info)

	for query, want := range map[string]string{
		"?label=suite=api-life&label=role=web": "api-life1",
		"?label=suite=api-life&label=role=db":  "api-life2",
		"?label=suite=api-life&label=role=x":   "",
	} {
		var l api.VMList
		r := ts.do(t, ctx, "GET", "/v1/vms"+query, nil)
		decodeJSON(t, r, 200, &l)
		conforms(t, "VMList", r.body)
		var got []string
		for _, vm := range l.VMs {
			got = append(got, vm.ID)
		}
		if strings.Join(got, ",") != want {
			t.Errorf("GET /v1/vms%s: %q, want %q", query, got, want)
		}
	}
	if r := ts.do(t, ctx, "GET", "/v1/vms?label=a%20b", nil); r.status != 400 {
		t.Errorf("bad label filter: %d %s", r.status, r.body)
	}

	r := ts.do(t, ctx, "POST", "/v1/vms/api-life2/ttl", api.SetTTL{TTLSeconds: 120, OnExpire: "stop"})
	decodeJSON(t, r, 200, &info)
	conforms(t, "VMInfo", r.body)
	if d := time.Until(info.Config.ExpiresAt); d < time.Minute || d > 2*time.Minute || info.Config.OnExpire != "stop" {
		t.Errorf("after POST ttl: %+v", info.Config)
	}
	info = smolvm.VMInfo{}
	decodeJSON(t, ts.do(t, ctx, "POST", "/v1/vms/api-life2/ttl", api.SetTTL{TTLSeconds: 0}), 200, &info)
	if !info.Config.ExpiresAt.IsZero() || info.Config.OnExpire != "stop" {
		t.Errorf("after POST ttl 0: %+v", info.Config)
	}
	for _, body := range []any{api.SetTTL{TTLSeconds: -1}, api.SetTTL{TTLSeconds: 1, OnExpire: "boom"}, `{"ttl_seconds": 1, "extra": 1}`} {
		if r := ts.do(t, ctx, "POST", "/v1/vms/api-life2/ttl", body); r.status != 400 {
			t.Errorf("POST ttl %v: %d %s", body, r.status, r.body)
		}
	}
	if r := ts.do(t, ctx, "POST", "/v1/vms", api.CreateVM{ID: "api-life3", Secrets: map[string]string{"S": "x"}}); r.status != 400 {
		t.Errorf("secrets without start: %d %s", r.status, r.body)
	}
}

// TestKeepLifetimes: a serving smolvm ends VMs no keeper keeps once
// their lifetime is over (here a created one, with on-expire delete),
// without any request naming them.
func TestKeepLifetimes(t *testing.T) {
	requireVM(t)
	ctx := testContext(t, 2*time.Minute)
	const id = "api-life-serve"
	t.Cleanup(func() { deleteVM(t, id) })
	vm, err := smolvm.NewFromConfig(ctx, smolvm.VMConfig{ID: id, TTL: time.Second, OnExpire: smolvm.ExpireDelete},
		smolvm.WithHome(testEnv.home), smolvm.WithAgent(testEnv.agent), smolvm.WithColdBoot())
	if err != nil {
		t.Fatal(err)
	}
	due := vm.Info().Config.ExpiresAt
	vm.Close()
	srv := server.New(server.Config{Home: testEnv.home, Agent: testEnv.agent})
	defer srv.Close()
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go srv.KeepLifetimes(kctx, 50*time.Millisecond)
	row := filepath.Join(testEnv.home, "vms", id)
	for {
		if _, err := os.Stat(row); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(due.Add(30 * time.Second)) {
			t.Fatal("still there 30s after its lifetime ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("deleted %s after its lifetime ended", time.Since(due).Round(time.Millisecond))
}
