package api

import "github.com/smolvm/smolvm"

// StartProcess is POST /v1/vms/{id}/processes: a background process, Argv
// (run without a shell) or Cmd (a shell command line). The response is
// the new smolvm.ProcessInfo (201).
type StartProcess struct {
	Argv []string          `json:"argv,omitempty"`
	Cmd  string            `json:"cmd,omitempty"`
	Dir  string            `json:"dir,omitempty"`
	User string            `json:"user,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
	// Stdin keeps the process's stdin open for POST .../stdin.
	Stdin bool `json:"stdin,omitempty"`
}

// ProcessList is GET /v1/vms/{id}/processes: running and recently exited,
// in start order.
type ProcessList struct {
	Processes []smolvm.ProcessInfo `json:"processes"`
}

// Signal is POST /v1/vms/{id}/processes/{pid}/signal: a name (TERM,
// SIGKILL) or a number; empty = TERM.
type Signal struct {
	Signal string `json:"signal,omitempty"`
}

// ProcessStdin is POST /v1/vms/{id}/processes/{pid}/stdin: Data (text) or
// DataB64, then Close closes the process's stdin.
type ProcessStdin struct {
	Data    string `json:"data,omitempty"`
	DataB64 string `json:"data_b64,omitempty"`
	Close   bool   `json:"close,omitempty"`
}

// ProcessEvent is one NDJSON line of GET .../attach: {"type":"stdout" or
// "stderr","data_b64":...}, {"type":"dropped","dropped":N} (output the
// agent no longer kept), then exactly one of {"type":"end","process":{...}}
// or {"type":"error","error":{...}}.
type ProcessEvent struct {
	Type    string              `json:"type"`
	DataB64 string              `json:"data_b64,omitempty"`
	Dropped int64               `json:"dropped,omitempty"`
	Process *smolvm.ProcessInfo `json:"process,omitempty"`
	Error   *ErrorDetail        `json:"error,omitempty"`
}
