package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/crypto/ssh"
)

// TestPasswordAndFileKeys serves SSH with a password hash file and an
// authorized_keys file and logs in every way, right and wrong.
func TestPasswordAndFileKeys(t *testing.T) {
	dir := t.TempDir()
	newKey := func() ssh.Signer {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ssh.NewSignerFromKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	host, vmKey, fileKey, otherKey := newKey(), newKey(), newKey(), newKey()
	hash, _ := bcrypt.GenerateFromPassword([]byte("hunter2"), bcrypt.MinCost)
	pwFile := filepath.Join(dir, "root_password")
	keysFile := filepath.Join(dir, "authorized_keys")
	os.WriteFile(pwFile, append(hash, '\n'), 0o600)
	os.WriteFile(keysFile, append([]byte("# comment\n"), ssh.MarshalAuthorizedKey(fileKey.PublicKey())...), 0o600)

	srv, err := NewServer(ServerConfig{
		HostKey: host, AuthorizedKeys: []ssh.PublicKey{vmKey.PublicKey()},
		EnvFile: filepath.Join(dir, "env.json"), ProfileFile: filepath.Join(dir, "p", "env.sh"), HomeDir: dir,
		PasswordHashFile: pwFile, AuthorizedKeysFile: keysFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })

	login := func(user string, auth ssh.AuthMethod) error {
		c, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{
			User: user, Auth: []ssh.AuthMethod{auth},
			HostKeyCallback: ssh.FixedHostKey(host.PublicKey()), Timeout: 10 * time.Second,
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, tc := range []struct {
		name, user string
		auth       ssh.AuthMethod
		ok         bool
	}{
		{"vm key", "root", ssh.PublicKeys(vmKey), true},
		{"key from file", "root", ssh.PublicKeys(fileKey), true},
		{"unknown key", "root", ssh.PublicKeys(otherKey), false},
		{"password", "root", ssh.Password("hunter2"), true},
		{"wrong password", "root", ssh.Password("hunter3"), false},
		{"password, other user", "admin", ssh.Password("hunter2"), false},
	} {
		if err := login(tc.user, tc.auth); (err == nil) != tc.ok {
			t.Errorf("%s: login error %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestNoPasswordFileNoPasswordMethod checks that without a hash file the
// server does not even offer password logins.
func TestNoPasswordFileNoPasswordMethod(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	host, _ := ssh.NewSignerFromKey(priv)
	srv, err := NewServer(ServerConfig{
		HostKey: host, AuthorizedKeys: []ssh.PublicKey{host.PublicKey()}, HomeDir: dir,
		EnvFile: filepath.Join(dir, "env.json"), PasswordHashFile: filepath.Join(dir, "missing"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if srv.sshConf.Load().PasswordCallback != nil {
		t.Fatal("password method offered without a password file")
	}
}
