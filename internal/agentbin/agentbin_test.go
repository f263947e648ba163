package agentbin

import (
	"os"
	"testing"
)

func TestExtract(t *testing.T) {
	saved := embedded
	t.Cleanup(func() { embedded = saved })
	dir := t.TempDir()

	embedded = nil
	if p, err := Extract(dir); p != "" || err != nil {
		t.Fatalf("no embedded agent: got %q, %v; want \"\", nil", p, err)
	}
	embedded = []byte("\x7fELF agent v1")
	p1, err := Extract(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p1); err != nil || string(b) != string(embedded) {
		t.Fatalf("extracted %q, %v", b, err)
	}
	if fi, _ := os.Stat(p1); fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("extracted agent is not executable: %v", fi.Mode())
	}
	if again, _ := Extract(dir); again != p1 {
		t.Fatalf("second extract: %q, want the same %q", again, p1)
	}
	embedded = []byte("\x7fELF agent v2")
	if p2, _ := Extract(dir); p2 == p1 {
		t.Fatal("a new agent reused the old file name")
	}
}
