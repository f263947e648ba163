package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// GenerateKey makes a new ed25519 key pair. It returns the signer and the
// private key as an OpenSSH PEM block, the format `ssh -i` reads.
func GenerateKey() (ssh.Signer, []byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: generate key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: generate key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "smolvm")
	if err != nil {
		return nil, nil, fmt.Errorf("guest: generate key: %w", err)
	}
	return signer, pem.EncodeToMemory(block), nil
}

// KnownHostsLine returns a known_hosts line pinning pub for addr
// ("host:port"; port 22 is written bare, others as [host]:port), for use
// with `ssh -o UserKnownHostsFile=...`.
func KnownHostsLine(addr string, pub ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(addr)}, pub)
}
