package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestParseRootShell(t *testing.T) {
	tests := []struct {
		name, passwd, want string
	}{
		{"alpine", "root:x:0:0:root:/root:/bin/ash\nbin:x:1:1:bin:/bin:/sbin/nologin\n", "/bin/ash"},
		{"root not first", "daemon:x:2:2::/:/bin/false\ntoor:x:0:0::/root:/bin/bash\n", "/bin/bash"},
		{"empty shell", "root:x:0:0:root:/root:\n", ""},
		{"no uid 0", "bin:x:1:1:bin:/bin:/sbin/nologin\n", ""},
		{"malformed", "root:0:/bin/sh\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseRootShell(strings.NewReader(tt.passwd)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBuildEnv(t *testing.T) {
	base := []string{
		"PATH=" + defaultPath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh",
	}
	tests := []struct {
		name    string
		term    string
		stored  map[string]string
		session []string
		want    []string
	}{
		{"base only", "", nil, nil, base},
		{"term from pty", "xterm", nil, nil, append(slices.Clone(base), "TERM=xterm")},
		{
			"file sorted, session last, later wins in place",
			"",
			map[string]string{"B": "file", "A": "file", "HOME": "/h"},
			[]string{"B=session", "C=x", "C=y"},
			[]string{"PATH=" + defaultPath, "HOME=/h", "USER=root", "LOGNAME=root", "SHELL=/bin/sh", "A=file", "B=session", "C=y"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildEnv("/root", "/bin/sh", tt.term, tt.stored, tt.session)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestValidEnvName(t *testing.T) {
	tests := map[string]bool{
		"A": true, "_": true, "a_B9": true, "_9": true,
		"": false, "9A": false, "A-B": false, "A=B": false, "A B": false, "Ä": false, "A\x00": false,
	}
	for name, want := range tests {
		if got := validEnvName(name); got != want {
			t.Errorf("validEnvName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestEnvStoreApply(t *testing.T) {
	dir := t.TempDir()
	profileDir := filepath.Join(dir, "profile.d")
	if err := os.Mkdir(profileDir, 0o755); err != nil {
		t.Fatal(err)
	}
	store := &envStore{
		path:        filepath.Join(dir, "new", "env.json"),
		profilePath: filepath.Join(profileDir, "smolvm_env.sh"),
	}
	steps := []struct {
		req     envRequest
		want    map[string]string
		wantErr string
	}{
		{req: envRequest{Op: "list"}, want: map[string]string{}},
		{req: envRequest{Op: "set", Vars: map[string]string{"A": "1", "B": "x y"}}, want: map[string]string{"A": "1", "B": "x y"}},
		{req: envRequest{Op: "set", Vars: map[string]string{"1A": "x"}}, wantErr: `invalid variable name "1A"`},
		{req: envRequest{Op: "set", Vars: map[string]string{"A": "nul\x00"}}, wantErr: "NUL"},
		{req: envRequest{Op: "unset", Keys: []string{"A=B"}}, wantErr: `invalid variable name "A=B"`},
		{req: envRequest{Op: "unset", Keys: []string{"A", "MISSING"}}, want: map[string]string{"B": "x y"}},
		{req: envRequest{Op: "frobnicate"}, wantErr: "unknown op"},
		{req: envRequest{Op: "list"}, want: map[string]string{"B": "x y"}},
	}
	for i, s := range steps {
		got, err := store.apply(s.req)
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("step %d (%s): err = %v, want one containing %q", i, s.req.Op, err, s.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, s.req.Op, err)
		}
		if len(got) != len(s.want) {
			t.Fatalf("step %d (%s): got %v, want %v", i, s.req.Op, got, s.want)
		}
		for k, v := range s.want {
			if got[k] != v {
				t.Fatalf("step %d (%s): got %v, want %v", i, s.req.Op, got, s.want)
			}
		}
	}

	for path, mode := range map[string]os.FileMode{
		store.path:               0o600,
		filepath.Dir(store.path): 0o700 | os.ModeDir,
		store.profilePath:        0o600,
	} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
		}
	}
	profile, err := os.ReadFile(store.profilePath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(profile), "export B='x y'\n") || strings.Contains(string(profile), "export A=") {
		t.Errorf("profile file:\n%s", profile)
	}
	if ents, _ := os.ReadDir(filepath.Dir(store.path)); len(ents) != 1 {
		t.Errorf("temporary files left behind: %v", ents)
	}
}

func TestEnvStoreNoProfileDir(t *testing.T) {
	dir := t.TempDir()
	store := &envStore{path: filepath.Join(dir, "env.json"), profilePath: filepath.Join(dir, "missing", "p.sh")}
	if _, err := store.apply(envRequest{Op: "set", Vars: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(store.profilePath)); !os.IsNotExist(err) {
		t.Errorf("profile dir was created (stat err %v); it should only be written where it exists", err)
	}
}

func TestNewServerValidates(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  ServerConfig
	}{
		{"no host key", ServerConfig{AuthorizedKeys: []ssh.PublicKey{key.PublicKey()}}},
		{"no authorized keys", ServerConfig{HostKey: key}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.HomeDir = t.TempDir()
			if _, err := NewServer(tt.cfg); err == nil {
				t.Error("NewServer succeeded")
			}
		})
	}
}
