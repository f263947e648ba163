package guest_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/guest"
)

// TestSecrets: start secrets reach every later command (a command's own
// env wins), replace each other whole, and never reach a file of the
// guest; a request the guest refuses says why without the value.
func TestSecrets(t *testing.T) {
	g := startGuest(t)
	c := dial(t, g)
	ctx := context.Background()
	sh := func(cmd string, env map[string]string) string {
		t.Helper()
		var out bytes.Buffer
		if _, err := c.Exec(ctx, guest.ExecRequest{Command: cmd, Env: env, Stdout: &out, Stderr: &out}); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	if err := c.SetSecrets(ctx, map[string]string{"TOKEN": "s3cr3t-a", "OTHER": "s3cr3t-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetEnv(ctx, map[string]string{"PLAIN": "p"}); err != nil {
		t.Fatal(err)
	}
	if got := sh(`echo "$TOKEN $OTHER $PLAIN"`, nil); got != "s3cr3t-a s3cr3t-b p\n" {
		t.Errorf("secrets in a command: %q", got)
	}
	if got := sh(`echo "$TOKEN"`, map[string]string{"TOKEN": "mine"}); got != "mine\n" {
		t.Errorf("a command's own env does not win: %q", got)
	}
	if err := c.SetSecrets(ctx, map[string]string{"TOKEN": "s3cr3t-c"}); err != nil {
		t.Fatal(err)
	}
	if got := sh(`echo "$TOKEN [$OTHER]"`, nil); got != "s3cr3t-c []\n" {
		t.Errorf("after a new set: %q", got)
	}
	filepath.WalkDir(g.dir, func(p string, d os.DirEntry, err error) error {
		if b, rerr := os.ReadFile(p); err == nil && rerr == nil && bytes.Contains(b, []byte("s3cr3t")) {
			t.Errorf("%s holds a secret", p)
		}
		return nil
	})

	for name, secrets := range map[string]map[string]string{
		"NUL in a value": {"K": "s3cr3t-x\x00y"},
		"too big":        {"K": "s3cr3t-" + strings.Repeat("x", 2<<20)},
	} {
		err := c.SetSecrets(ctx, secrets)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%s: the error quotes the value: %.200v", name, err)
		}
	}
	if got := sh(`echo "$TOKEN"`, nil); got != "s3cr3t-c\n" {
		t.Errorf("a refused request changed the secrets: %q", got)
	}
}
