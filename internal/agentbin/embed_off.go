//go:build !embedagent

package agentbin

// Without the embedagent tag, smolvm is its own agent (multi-call).
var embedded []byte
