package smolvm_test

import (
	"errors"
	"os"
	"testing"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/cgroup"
)

// TestCgroupLeftover: a VM cgroup whose VM is gone (a smolvm killed
// before its stop) is a leftover doctor lists and --fix removes.
func TestCgroupLeftover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a cgroup")
	}
	h, err := cgroup.Detect()
	if err != nil {
		t.Skip("no usable cgroup here: ", err)
	}
	g, err := h.Create("0123456789ab", cgroup.Limits{CPU: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Remove() })
	left, err := smolvm.FindLeftovers(t.Context(), smolvm.WithHome(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	var mine []smolvm.Leftover
	for _, l := range left {
		if l.Kind == "cgroup" && l.Name == g.Dirs[0] {
			mine = append(mine, l)
		}
	}
	if len(mine) != 1 {
		t.Fatalf("leftovers %+v: want the cgroup %s", left, g.Dirs[0])
	}
	if err := smolvm.RemoveLeftovers(t.Context(), mine); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.Dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after RemoveLeftovers: %v", d, err)
		}
	}
}
