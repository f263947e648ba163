package disk

import (
	"os"
	"path/filepath"
	"testing"
)

// TestToolOutsidePATH: an ordinary user's PATH lacks /sbin, where Debian
// puts e2fsprogs; smolvm finds them there anyway.
func TestToolOutsidePATH(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mke2fs"); err != nil {
		if _, err := os.Stat("/sbin/mke2fs"); err != nil {
			t.Skip("e2fsprogs is not installed (apt-get install e2fsprogs)")
		}
	}
	t.Setenv("PATH", "/usr/bin:/bin")
	for _, tc := range []struct {
		name string
		abs  bool
	}{
		{"mke2fs", true},
		{"resize2fs", true},
		{"no-such-tool-smolvm", false},
	} {
		if got := Tool(tc.name); filepath.IsAbs(got) != tc.abs {
			t.Errorf("Tool(%q) = %q, want an absolute path: %v", tc.name, got, tc.abs)
		}
	}
}
