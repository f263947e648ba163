package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

// maxSecretFile bounds a --secret-file.
const maxSecretFile = 1 << 20

// secretFlags are --secret and --secret-file, for exec (this command's
// secrets) and create/start (the VM's start secrets).
type secretFlags struct {
	secrets []string
	files   []string
}

func (f *secretFlags) register(cmd *cobra.Command, scope string) {
	fs := cmd.Flags()
	fs.StringArrayVar(&f.secrets, "secret", nil, "a secret environment variable "+scope+", never written to smolvm's state, logs or disk: NAME=VALUE, or NAME alone to take the value of NAME in this command's environment (other local users can see a NAME=VALUE argument in ps; prefer NAME or --secret-file) (repeatable)")
	fs.StringArrayVar(&f.files, "secret-file", nil, "a secret as --secret, its value read from a file: NAME=PATH (one trailing newline is dropped) (repeatable)")
}

// parse returns the secrets; nil for none.
func (f *secretFlags) parse() (map[string]string, error) {
	if len(f.secrets) == 0 && len(f.files) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, s := range f.secrets {
		name, value, ok := strings.Cut(s, "=")
		if !ok {
			v, set := os.LookupEnv(name)
			if !set {
				return nil, usagef("--secret %s: %s is not set in this command's environment (give NAME=VALUE, or export %s first)", name, name, name)
			}
			value = v
		}
		if err := smolvm.ValidateEnvName(name); err != nil {
			return nil, err
		}
		out[name] = value
	}
	for _, s := range f.files {
		name, path, ok := strings.Cut(s, "=")
		if !ok || path == "" {
			return nil, usagef("--secret-file %q: want NAME=PATH", s)
		}
		if err := smolvm.ValidateEnvName(name); err != nil {
			return nil, err
		}
		b, err := readSecretFile(path)
		if err != nil {
			return nil, fmt.Errorf("--secret-file %s: %w", name, err)
		}
		out[name] = b
	}
	if err := smolvm.ValidateEnv(out); err != nil {
		return nil, err
	}
	return out, nil
}

func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxSecretFile {
		return "", usagef("%s is larger than %d bytes", path, maxSecretFile)
	}
	b, _ = bytes.CutSuffix(b, []byte("\n"))
	return string(b), nil
}

// takeStartSecrets parses create's or start's secret flags into
// g.startSecrets, which every SDK call and server request of the command
// then carries.
func (g *globalOptions) takeStartSecrets(f secretFlags, noStart bool) error {
	s, err := f.parse()
	if err != nil {
		return err
	}
	if s != nil && noStart {
		return usagef("--secret is handed to the VM at its start: without --no-start, or give it to smolvm start")
	}
	g.startSecrets = s
	return nil
}
