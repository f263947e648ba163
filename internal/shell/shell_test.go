package shell

import (
	"os/exec"
	"testing"
)

// TestQuote checks quoting against a real shell.
func TestQuote(t *testing.T) {
	for _, s := range []string{"", "plain", "it's", "'", "''", `a"b$c\d`, "line1\nline2", "$(reboot)", "`id`", "*"} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+Quote(s)).Output()
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if string(out) != s {
			t.Errorf("sh read %q back as %q", s, out)
		}
	}
}
