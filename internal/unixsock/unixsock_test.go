package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	if err := mkdir(dir); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	var ln net.Listener
	if err := Path(sock, func(p string) (err error) { ln, err = net.Listen("unix", p); return err }); err != nil {
		t.Fatalf("listen at a %d-byte path: %v", len(sock), err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	if err := Path(sock, func(p string) error {
		c, err := net.Dial("unix", p)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("dial: %v", err)
	}
}

func mkdir(p string) error { return os.MkdirAll(p, 0o700) }
