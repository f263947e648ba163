package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
)

// TestLifetimeCLI: a VM made by `smolvm create --ttl` is deleted by its
// keeper once its lifetime (shortened by `smolvm ttl`) is over, with no
// smolvm command running; labels filter list; secrets from the CLI's
// environment and from a file reach the guest.
func TestLifetimeCLI(t *testing.T) {
	c := cli{t: t, bin: cliBinary(t), home: t.TempDir(), env: []string{"CLI_SECRET=s3cr3t-cli-5521"}}
	t.Cleanup(func() {
		if r := c.run("delete", "--all"); r.code != 0 {
			t.Errorf("cleanup: delete --all: exit %d: %s", r.code, r.stderr)
		}
		checkNoLeaks(t, c.home, nil)
	})
	secretFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(secretFile, []byte("s3cr3t-file-8812\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var info smolvm.VMInfo
	c.json(&info, "create", "--cold", "--name", "ttl1", "--ttl", "10m", "--on-expire", "delete",
		"--label", "team=ml", "--label", "tier=gpu", "--secret", "CLI_SECRET")
	if info.State != smolvm.StateRunning || info.Config.OnExpire != smolvm.ExpireDelete || info.Config.Labels["team"] != "ml" ||
		time.Until(info.Config.ExpiresAt) < 9*time.Minute {
		t.Fatalf("created %+v", info)
	}
	if out := c.ok("exec", "--secret-file", "TOK="+secretFile, "ttl1", "--", "sh", "-c", `echo "$TOK $CLI_SECRET"`); out != "s3cr3t-file-8812 s3cr3t-cli-5521\n" {
		t.Errorf("secrets in the guest: %q", out)
	}
	if r := c.run("exec", "--secret", "NOT_SET_ANYWHERE", "ttl1", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "not set") {
		t.Errorf("--secret of an unset variable: exit %d: %s", r.code, r.stderr)
	}

	for _, tc := range []struct {
		filters []string
		want    bool
	}{
		{[]string{"label=team=ml"}, true},
		{[]string{"label=team=ml", "label=tier"}, true},
		{[]string{"label=team=ml", "label=tier=cpu"}, false},
		{[]string{"label=owner"}, false},
	} {
		args := []string{"list"}
		for _, f := range tc.filters {
			args = append(args, "--filter", f)
		}
		var vms []smolvm.VMInfo
		c.json(&vms, args...)
		if got := slices.ContainsFunc(vms, func(v smolvm.VMInfo) bool { return v.ID == "ttl1" }); got != tc.want {
			t.Errorf("list %q: listed %v, want %v", tc.filters, got, tc.want)
		}
	}
	if r := c.run("list", "--filter", "team=ml"); r.code == 0 {
		t.Errorf("list --filter without label=: exit %d", r.code)
	}
	if out := c.ok("info", "ttl1"); !strings.Contains(out, "team=ml") || !strings.Contains(out, "(delete)") {
		t.Errorf("info shows no labels or lifetime:\n%s", out)
	}

	// The lifetime, shortened: the keeper is told, and deletes the VM
	// while no smolvm command runs (none looks at the VM meanwhile).
	c.json(&info, "ttl", "ttl1", "4s")
	due := info.Config.ExpiresAt
	dir := filepath.Join(c.home, "vms", "ttl1")
	for {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(due.Add(30 * time.Second)) {
			t.Fatalf("the VM still exists 30s after its lifetime ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("deleted by its keeper %s after its lifetime ended", time.Since(due).Round(time.Millisecond))
	var vms []smolvm.VMInfo
	c.json(&vms, "list")
	if len(vms) != 0 {
		t.Errorf("listed after deletion: %+v", vms)
	}
}
