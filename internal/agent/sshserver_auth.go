package agent

import (
	"bytes"
	"errors"
	"os"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/crypto/ssh"
)

// passwordCallback accepts root's password, checked against a bcrypt
// hash. Only user "root": the hash is root's, and sessions run as root.
// bcrypt's cost and the SSH library's limit on attempts per connection
// slow guessing down.
func passwordCallback(hash []byte) func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) {
	return func(meta ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
		if meta.User() != "root" {
			// Spend the same time, so the answer does not tell users apart.
			bcrypt.CompareHashAndPassword(hash, password)
			return nil, errors.New("agent: ssh server: password login is for root only")
		}
		if err := bcrypt.CompareHashAndPassword(hash, password); err != nil {
			return nil, errors.New("agent: ssh server: wrong password")
		}
		return &ssh.Permissions{}, nil
	}
}

// fileAuthorizes reports whether the authorized_keys file at path lists
// the key whose wire encoding is wire. Lines with options are honoured
// only as plain keys (options are ignored, never widened).
func fileAuthorizes(path string, wire []byte) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for len(bytes.TrimSpace(data)) > 0 {
		pub, _, opts, rest, err := ssh.ParseAuthorizedKey(data)
		if err != nil {
			return false
		}
		if len(opts) == 0 && bytes.Equal(pub.Marshal(), wire) {
			return true
		}
		data = rest
	}
	return false
}
