package shacrypt

import (
	"os/exec"
	"strings"
	"testing"
)

// Vectors from Drepper's specification.
func TestCryptVectors(t *testing.T) {
	for _, tc := range []struct{ setting, password, want string }{
		{"$6$saltstring", "Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
		{"$6$rounds=10000$saltstringsaltstring", "Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
		{"$6$rounds=5000$toolongsaltstring", "This is just a test", "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"},
		{"$6$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.", "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"},
		{"$6$rounds=10$roundstoolow", "the minimum number is still observed", "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."},
	} {
		got, err := Crypt(tc.password, tc.setting)
		if err != nil || got != tc.want {
			t.Errorf("Crypt(%q, %q) = %q, %v; want %q", tc.password, tc.setting, got, err, tc.want)
		}
	}
}

// TestHashMatchesOpenSSL checks a random-salt hash against openssl's.
func TestHashMatchesOpenSSL(t *testing.T) {
	h, err := Hash("s3cret pass")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := Crypt("s3cret pass", h); again != h {
		t.Fatalf("re-crypt with own setting = %q, want %q", again, h)
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed; cross-check skipped")
	}
	salt := strings.Split(h, "$")[2]
	out, err := exec.Command(openssl, "passwd", "-6", "-salt", salt, "s3cret pass").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != h {
		t.Fatalf("openssl = %q, ours = %q", out, h)
	}
}
