package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// converse runs ServeControl over pipes, sends lines and returns one
// answer per line it expects.
func converse(t *testing.T, apply func(Identity) error, input string, answers int) []controlAnswer {
	t.Helper()
	var out bytes.Buffer
	if err := ServeControl(strings.NewReader(input), &out, apply); err != nil {
		t.Fatalf("ServeControl: %v", err)
	}
	var got []controlAnswer
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var a controlAnswer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("answer %q: %v", sc.Text(), err)
		}
		got = append(got, a)
	}
	if len(got) != answers {
		t.Fatalf("got %d answers, want %d: %+v", len(got), answers, got)
	}
	return got
}

func TestServeControlPingAndErrors(t *testing.T) {
	never := func(Identity) error { t.Error("apply called"); return nil }
	for _, tc := range []struct {
		name, input string
		wantOK      bool
		wantID      uint64
		wantErr     string
	}{
		{"ping", `{"id":7,"op":"ping"}` + "\n", true, 7, ""},
		{"unknown op", `{"id":8,"op":"reboot"}` + "\n", false, 8, "unknown op"},
		{"garbage", "hello\n", false, 0, "bad request"},
		{"wrong type keeps id", `{"id":9,"op":"identity","seed":12}` + "\n", false, 9, "bad request"},
		{"bad hostname", `{"id":1,"op":"identity","hostname":"a b"}` + "\n", false, 1, "hostname"},
		{"long hostname", `{"id":1,"op":"identity","hostname":"` + strings.Repeat("a", 65) + `"}` + "\n", false, 1, "64 bytes"},
		{"bad mac", `{"id":1,"op":"identity","mac":"01:00:5e:00:00:01"}` + "\n", false, 1, "unicast"},
		{"bad machine id", `{"id":1,"op":"identity","machine_id":"XYZ"}` + "\n", false, 1, "machine id"},
		{"zero machine id", `{"id":1,"op":"identity","machine_id":"` + strings.Repeat("0", 32) + `"}` + "\n", false, 1, "machine id"},
		{"short seed", `{"id":1,"op":"identity","seed":"AAAA"}` + "\n", false, 1, "seed"},
		{"bad host key", `{"id":1,"op":"identity","host_key":"AAAA"}` + "\n", false, 1, "host key"},
		{"bad authorized key", `{"id":1,"op":"identity","authorized_keys":"bm9wZQ=="}` + "\n", false, 1, "authorized keys"},
		{"ipv6 address", `{"id":1,"op":"identity","address":"fd00::2/64"}` + "\n", false, 1, "IPv4"},
		{"gateway alone", `{"id":1,"op":"identity","gateway":"10.0.0.1"}` + "\n", false, 1, "gateway"},
		{"bad address", `{"id":1,"op":"identity","address":"10.0.0.300/24"}` + "\n", false, 1, "bad request"},
		{"negative time", `{"id":1,"op":"identity","time_unix_nano":-5}` + "\n", false, 1, "1970"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := converse(t, never, tc.input, 1)[0]
			if a.OK != tc.wantOK || a.ID != tc.wantID || !strings.Contains(a.Error, tc.wantErr) {
				t.Errorf("answer %+v, want ok=%v id=%d error containing %q", a, tc.wantOK, tc.wantID, tc.wantErr)
			}
		})
	}
}

func TestServeControlIdentity(t *testing.T) {
	hostKey, hostPEM := testKeyPEM(t)
	client, _ := testKeyPEM(t)
	seed := bytes.Repeat([]byte{0xab}, 64)
	now := time.Unix(1_900_000_000, 123)
	req := controlRequest{ID: 42, Op: "identity", IdentityRequest: IdentityRequest{
		Hostname: "clone-1", Address: netip.MustParsePrefix("10.1.2.3/24"), Gateway: netip.MustParseAddr("10.1.2.1"),
		MAC: "02:11:22:33:44:55", DNS: []netip.Addr{netip.MustParseAddr("10.1.2.1")},
		HostKey: hostPEM, AuthorizedKeys: ssh.MarshalAuthorizedKey(client.PublicKey()),
		MachineID: "0123456789abcdef0123456789abcdef", Seed: seed, TimeUnixNano: now.UnixNano(),
	}}
	line, _ := json.Marshal(req)
	var got Identity
	calls := 0
	a := converse(t, func(id Identity) error { calls++; got = id; return nil }, string(line)+"\n", 1)[0]
	if !a.OK || a.ID != 42 || calls != 1 {
		t.Fatalf("answer %+v after %d applies", a, calls)
	}
	if got.Hostname != "clone-1" || got.Address != req.Address || got.Gateway != req.Gateway || got.MAC.String() != req.MAC ||
		len(got.DNS) != 1 || got.MachineID != req.MachineID || !bytes.Equal(got.Seed, seed) || !got.Time.Equal(now) {
		t.Errorf("applied %+v", got)
	}
	if !bytes.Equal(got.HostKey.PublicKey().Marshal(), hostKey.PublicKey().Marshal()) {
		t.Error("host key differs")
	}
	if len(got.AuthorizedKeys) != 1 || !bytes.Equal(got.AuthorizedKeys[0].Marshal(), client.PublicKey().Marshal()) {
		t.Error("authorized keys differ")
	}

	// An apply failure is the answer, and the next request is served.
	fails := func(Identity) error { return errors.New("network: no eth0") }
	as := converse(t, fails, `{"id":1,"op":"identity","hostname":"x"}`+"\n"+`{"id":2,"op":"ping"}`+"\n", 2)
	if as[0].OK || as[0].Error != "network: no eth0" || !as[1].OK || as[1].ID != 2 {
		t.Errorf("answers %+v", as)
	}
}

func TestServeControlBounds(t *testing.T) {
	// A line past the bound is refused as a whole; the stream stays in step.
	long := `{"id":1,"op":"ping","hostname":"` + strings.Repeat("a", MaxControlLine) + `"}`
	as := converse(t, nil, long+"\n"+`{"id":2,"op":"ping"}`+"\n", 2)
	if as[0].OK || !strings.Contains(as[0].Error, "longer than") || !as[1].OK || as[1].ID != 2 {
		t.Errorf("answers %+v", as)
	}
	// A partial line when the host hangs up is dropped, not answered.
	converse(t, nil, `{"id":3,"op":"ping"}`+"\n"+`{"id":4,"op":"pi`, 1)
	// Without an applier, an identity is refused, not a crash.
	if a := converse(t, nil, `{"id":6,"op":"identity","hostname":"x"}`+"\n", 1)[0]; a.OK || !strings.Contains(a.Error, "not supported") {
		t.Errorf("answer %+v", a)
	}
	// Blank lines are ignored.
	converse(t, nil, "\n\n"+`{"id":5,"op":"ping"}`+"\n", 1)
}

func TestServeControlReadError(t *testing.T) {
	r := io.MultiReader(strings.NewReader(`{"id":1,"op":"ping"}`+"\n"), errReader{})
	var out bytes.Buffer
	if err := ServeControl(r, &out, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("ServeControl = %v, want the read error", err)
	}
	if !strings.Contains(out.String(), `"ok":true`) {
		t.Errorf("output %q", out.String())
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func testKeyPEM(t *testing.T) (ssh.Signer, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return signer, pem.EncodeToMemory(block)
}

// TestSetKeys: after SetKeys, new connections meet the new host key and
// accept only the new client key, while an open connection keeps working.
func TestSetKeys(t *testing.T) {
	oldHost, _ := testKeyPEM(t)
	oldClient, _ := testKeyPEM(t)
	newHost, _ := testKeyPEM(t)
	newClient, _ := testKeyPEM(t)
	srv, err := NewServer(ServerConfig{HostKey: oldHost, AuthorizedKeys: []ssh.PublicKey{oldClient.PublicKey()},
		HomeDir: t.TempDir(), EnvFile: filepath.Join(t.TempDir(), "env.json")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	dial := func(host, client ssh.Signer) (*ssh.Client, error) {
		return ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(client)},
			HostKeyCallback: ssh.FixedHostKey(host.PublicKey()), Timeout: 5 * time.Second,
		})
	}
	open, err := dial(oldHost, oldClient)
	if err != nil {
		t.Fatalf("dial before: %v", err)
	}
	defer open.Close()
	if err := srv.SetKeys(newHost, nil); err == nil {
		t.Error("SetKeys without authorized keys succeeded")
	}
	if err := srv.SetKeys(newHost, []ssh.PublicKey{newClient.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(newHost, newClient); err != nil {
		t.Errorf("new keys refused: %v", err)
	} else {
		c.Close()
	}
	if c, err := dial(newHost, oldClient); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("old client key: %v, want refused", err)
		if c != nil {
			c.Close()
		}
	}
	if c, err := dial(oldHost, newClient); err == nil || !strings.Contains(err.Error(), "host key mismatch") {
		t.Errorf("old host key pinned: %v, want mismatch", err)
		if c != nil {
			c.Close()
		}
	}
	if _, _, err := open.SendRequest("keepalive@openssh.com", true, nil); err != nil {
		t.Errorf("the open connection broke: %v", err)
	}
}

func TestIdentityProxy(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // "" = left as it is; "none" = cleared
		bad  bool
	}{
		{in: "", want: ""},
		{in: "off", want: "none"},
		{in: "10.0.2.100:3128", want: "10.0.2.100:3128"},
		{in: "10.0.2.100", bad: true},
		{in: "[::1]:3128", bad: true},
		{in: "10.0.2.100:0", bad: true},
		{in: "http://10.0.2.100:3128", bad: true},
	} {
		id, err := IdentityRequest{Proxy: tt.in}.Parse()
		if tt.bad {
			if err == nil {
				t.Errorf("proxy %q accepted", tt.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("proxy %q: %v", tt.in, err)
			continue
		}
		got := ""
		if id.Proxy != nil {
			got = "none"
			if id.Proxy.IsValid() {
				got = id.Proxy.String()
			}
		}
		if got != tt.want {
			t.Errorf("proxy %q: %q, want %q", tt.in, got, tt.want)
		}
	}
}
