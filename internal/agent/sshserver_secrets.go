package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sync"
)

// Secrets are variables the host hands the guest at start that every
// command's environment gets, like the persistent env, but that live in
// this process's memory only: never in the env file, the profile script
// or anything else on the guest's disk (a file on the host), and gone
// when the guest stops. The host gives them again at the next start.

// maxSecretsRequest bounds what a smolvm-secrets client may make us buffer.
const maxSecretsRequest = 1 << 20

// MaxSecrets bounds how many secrets the guest holds.
const MaxSecrets = 256

// secretStore holds the start secrets. The zero value is empty.
type secretStore struct {
	mu   sync.Mutex
	vars map[string]string
}

// overlay returns env with the secrets laid over it (a new map; env is
// not changed). Session env requests still win over both.
func (s *secretStore) overlay(env map[string]string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.vars) == 0 {
		return env
	}
	out := make(map[string]string, len(env)+len(s.vars))
	maps.Copy(out, env)
	maps.Copy(out, s.vars)
	return out
}

// secretsRequest is the one JSON message a smolvm-secrets client writes:
// the whole set, replacing what was there.
type secretsRequest struct {
	Secrets map[string]string `json:"secrets"`
}

// startSecrets serves the smolvm-secrets subsystem: one JSON request read
// to EOF, {"count":N} or {"error":...} back, exit status 0 or 1. No value
// is ever logged or echoed.
func (s *session) startSecrets() (func(), error) {
	return func() {
		s.wg.Go(func() {
			n, err := s.serveSecrets()
			var reply any = struct {
				Count int `json:"count"`
			}{n}
			code := uint32(0)
			if err != nil {
				reply, code = struct {
					Error string `json:"error"`
				}{err.Error()}, 1
			}
			data, _ := json.Marshal(reply)
			_, _ = s.ch.Write(append(data, '\n'))
			s.sendExitStatus(code)
			_ = s.ch.Close()
		})
	}, nil
}

func (s *session) serveSecrets() (int, error) {
	data, err := io.ReadAll(io.LimitReader(s.ch, maxSecretsRequest+1))
	if err != nil {
		return 0, fmt.Errorf("read request: %w", err)
	}
	if len(data) > maxSecretsRequest {
		return 0, fmt.Errorf("request larger than %d bytes", maxSecretsRequest)
	}
	var req secretsRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		// Not %w: a JSON error may quote the input.
		return 0, fmt.Errorf("parse request: malformed JSON")
	}
	if len(req.Secrets) > MaxSecrets {
		return 0, fmt.Errorf("more than %d secrets", MaxSecrets)
	}
	for k, v := range req.Secrets {
		if !validEnvEntry(k, v) {
			return 0, fmt.Errorf("secret %q: not a valid environment variable", k)
		}
	}
	s.srv.secrets.mu.Lock()
	s.srv.secrets.vars = maps.Clone(req.Secrets)
	s.srv.secrets.mu.Unlock()
	s.log.Debug("ssh session: secrets", "count", len(req.Secrets))
	return len(req.Secrets), nil
}
