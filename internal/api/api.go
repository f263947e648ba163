// Package api is the wire contract of `smolvm serve`: the JSON bodies of
// its requests and responses, its error codes and its routes. The server
// (internal/server) and the Go client (internal/apiclient) both use these
// types, so the two cannot drift; docs/api.md and openapi.json describe the
// same contract for everyone else.
//
// Where the SDK already has a JSON shape (smolvm.VMInfo, SnapshotInfo,
// PortForward, Check; image.Image) the API sends it as it is.
package api

import (
	"errors"
	"io/fs"
	"net/http"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
)

// Version is the API's path prefix.
const Version = "v1"

// Headers and media types with a meaning of their own.
const (
	// TokenFile is the server's bearer token, under SMOLVM_HOME, mode 0600.
	TokenFile = "serve.token"
	// SocketFile is the default UNIX socket, under SMOLVM_HOME, mode 0600.
	SocketFile = "smolvm.sock"
	// HostEnv names the server the CLI and clients talk to:
	// unix:///path/to.sock or tcp://host:port.
	HostEnv = "SMOLVM_HOST"
	// TokenEnv gives clients the bearer token for a TCP server.
	TokenEnv = "SMOLVM_TOKEN"

	NDJSON = "application/x-ndjson" // streamed events, one JSON object a line
	Tar    = "application/x-tar"    // a directory tree
	Binary = "application/octet-stream"
	// FileModeHeader carries a file's permission bits, octal ("0644"),
	// on uploads and downloads of one file.
	FileModeHeader = "X-Smolvm-Mode"
)

// Error codes: the SDK's error set, one stable string each. The HTTP status
// goes with the code (see Status).
const (
	CodeInvalid       = "invalid"                // 400: bad input; nothing changed
	CodeUnauthorized  = "unauthorized"           // 401: missing or wrong bearer token
	CodeNotFound      = "not_found"              // 404: no such VM, snapshot, image, file or route
	CodeNotAllowed    = "method_not_allowed"     // 405
	CodeAlreadyExists = "already_exists"         // 409
	CodeNotRunning    = "not_running"            // 409: the operation needs a running VM
	CodeInUse         = "in_use"                 // 409: e.g. a snapshot VMs depend on
	CodeTooLarge      = "too_large"              // 413: a body or upload over its limit
	CodeUnsupported   = "unsupported_media_type" // 415
	CodeTimeout       = "timeout"                // 504: the operation ran past its timeout
	CodeCanceled      = "canceled"               // 499: the client went away
	CodeInternal      = "internal"               // 500: anything else
	CodeExited        = "process_exited"         // 409: the background process has exited
	CodePermission    = "permission_denied"      // 403: the guest refused a file operation
)

// Status is the HTTP status of an error code.
func Status(code string) int {
	switch code {
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodePermission:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeAlreadyExists, CodeNotRunning, CodeInUse, CodeExited:
		return http.StatusConflict
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnsupported:
		return http.StatusUnsupportedMediaType
	case CodeTimeout:
		return http.StatusGatewayTimeout
	case CodeCanceled:
		return 499
	}
	return http.StatusInternalServerError
}

// CodeOf maps an SDK error to its code.
func CodeOf(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, smolvm.ErrTimeout):
		return CodeTimeout
	case errors.Is(err, smolvm.ErrInvalid):
		return CodeInvalid
	case errors.Is(err, smolvm.ErrNotFound):
		return CodeNotFound
	case errors.Is(err, smolvm.ErrAlreadyExists):
		return CodeAlreadyExists
	case errors.Is(err, smolvm.ErrNotRunning):
		return CodeNotRunning
	case errors.Is(err, smolvm.ErrInUse):
		return CodeInUse
	case errors.Is(err, smolvm.ErrProcessExited):
		return CodeExited
	case errors.Is(err, smolvm.ErrTooLarge):
		return CodeTooLarge
	case errors.Is(err, fs.ErrNotExist):
		return CodeNotFound
	case errors.Is(err, fs.ErrExist):
		return CodeAlreadyExists
	case errors.Is(err, fs.ErrPermission):
		return CodePermission
	}
	return CodeInternal
}

// ErrorBody is every error response: {"error": {"code": ..., "message": ...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong. Field names the offending input when
// the code is "invalid".
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// Errno names the guest's errno when a file operation failed
	// ("ENOENT", "EISDIR", "ENOTEMPTY"...).
	Errno string `json:"errno,omitempty"`
}

// Serving is what `smolvm serve --json` prints once it listens: the
// addresses (as SMOLVM_HOST takes them), the socket, where the TCP token
// is kept (when it made or read one) and its PID.
type Serving struct {
	URLs      []string `json:"urls"`
	Socket    string   `json:"socket,omitempty"`
	TokenFile string   `json:"token_file,omitempty"`
	PID       int      `json:"pid"`
}

// Health is GET /v1/health: the server is up, and which build it is.
type Health struct {
	Version string `json:"version"` // smolvm's build version
	API     string `json:"api"`     // Version
	Home    string `json:"home"`    // the state directory it serves
	PID     int    `json:"pid"`
}

// CreateVM is POST /v1/vms. The fields are smolvm.VMConfig's, plus how to
// make and start the VM. Sizes 0 mean the defaults, as in the SDK.
type CreateVM struct {
	ID                 string            `json:"id,omitempty"`
	VCPUs              int               `json:"vcpus,omitempty"`
	MemoryMiB          int               `json:"memory_mib,omitempty"`
	DiskMiB            int               `json:"disk_mib,omitempty"`
	Image              string            `json:"image,omitempty"`
	KernelPath         string            `json:"kernel_path,omitempty"`
	RootfsPath         string            `json:"rootfs_path,omitempty"`
	InitrdPath         string            `json:"initrd_path,omitempty"`
	BootArgs           string            `json:"boot_args,omitempty"`
	Env                map[string]string `json:"env,omitempty"`
	Mounts             []smolvm.Mount    `json:"mounts,omitempty"`
	NoEgress           bool              `json:"no_egress,omitempty"`
	RetainDiskOnDelete bool              `json:"retain_disk_on_delete,omitempty"`
	ReuseDisk          bool              `json:"reuse_disk,omitempty"`
	// Limits bound the VM's CPU, memory, disk and network (smolvm.Limits).
	Limits smolvm.Limits `json:"limits,omitzero"`
	// BootTimeoutSeconds bounds the start (when Start is set); 0 = 60.
	BootTimeoutSeconds float64 `json:"boot_timeout_seconds,omitempty"`
	// Network is "auto" (default), "tap" or "user".
	Network string `json:"network,omitempty"`
	// FromSnapshot makes the VM from a snapshot (smolvm.FromSnapshot):
	// it is running when the response comes; the size fields must be 0.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Cold boots instead of resuming the warm default template.
	Cold bool `json:"cold,omitempty"`
	// Start boots the VM before answering (smolvm.Start): the response is
	// the running VM. Otherwise the VM is created and stays "created".
	Start bool `json:"start,omitempty"`
	// Egress is the egress policy (smolvm.EgressPolicy); DNSUpstream the
	// resolver allowed names are forwarded to, ADDR[:PORT].
	Egress      smolvm.EgressPolicy `json:"egress,omitzero"`
	DNSUpstream string              `json:"dns_upstream,omitempty"`
	// TTLSeconds is the VM's lifetime from now (VMConfig.TTL; 0 = none),
	// OnExpire what ends it: "stop" (default), "hibernate" or "delete".
	TTLSeconds float64 `json:"ttl_seconds,omitempty"`
	OnExpire   string  `json:"on_expire,omitempty"`
	// Labels tag the VM (VMConfig.Labels); GET /v1/vms?label=K=V finds it.
	Labels map[string]string `json:"labels,omitempty"`
	// Secrets are start secrets (smolvm.WithStartSecrets), with Start or
	// FromSnapshot: environment variables never written down.
	Secrets map[string]string `json:"secrets,omitempty"`
}

// SetTTL is POST /v1/vms/{id}/ttl: a new lifetime from now (0 = none);
// OnExpire "" keeps the VM's.
type SetTTL struct {
	TTLSeconds float64 `json:"ttl_seconds"`
	OnExpire   string  `json:"on_expire,omitempty"`
}

// VMList is GET /v1/vms.
type VMList struct {
	VMs []smolvm.VMInfo `json:"vms"`
}

// Start is POST /v1/vms/{id}/start (body optional).
type Start struct {
	BootTimeoutSeconds float64 `json:"boot_timeout_seconds,omitempty"`
	// Secrets reach every command of this run of the VM as environment
	// variables and are never written down (smolvm.WithStartSecrets).
	Secrets map[string]string `json:"secrets,omitempty"`
}

// Stop is POST /v1/vms/{id}/stop (body optional).
type Stop struct {
	// TimeoutSeconds: kill after this long; 0 = smolvm.DefaultStopTimeout.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// Pause is POST /v1/vms/{id}/pause (body optional).
type Pause struct {
	ToDisk bool `json:"to_disk,omitempty"` // hibernate
}

// Exec is POST /v1/vms/{id}/exec (buffered, or NDJSON-streamed with
// ?stream=true) and the first message of the exec WebSocket.
type Exec struct {
	// Cmd is a shell command line, run by the guest's /bin/sh -c.
	Cmd string `json:"cmd,omitempty"`
	// Argv, instead of Cmd, is run without a shell (docs/processes.md);
	// Dir and User (a name or uid) apply to either form.
	Argv           []string          `json:"argv,omitempty"`
	Dir            string            `json:"dir,omitempty"`
	User           string            `json:"user,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	TimeoutSeconds float64           `json:"timeout_seconds,omitempty"`
	// Secrets are variables for this command only that smolvm never
	// writes down (smolvm.WithSecrets).
	Secrets map[string]string `json:"secrets,omitempty"`
	// Stdin is given whole for buffered exec: as text, or as base64 in
	// StdinB64 (not both). The WebSocket streams stdin instead.
	Stdin    string `json:"stdin,omitempty"`
	StdinB64 string `json:"stdin_b64,omitempty"`
	// OutputLimit caps each captured stream (buffered exec); 0 = the
	// SDK's default, 64 MiB.
	OutputLimit int64 `json:"output_limit,omitempty"`
	// TTY runs on a pseudo-terminal (WebSocket only) of Width x Height.
	TTY    bool   `json:"tty,omitempty"`
	Term   string `json:"term,omitempty"`
	Width  int    `json:"width,omitempty"`
	Height int    `json:"height,omitempty"`
}

// ExecResult is the buffered exec's response and, with Type "exit", the
// last event of a streamed one. Output that is valid UTF-8 is in Stdout and
// Stderr; otherwise it is base64 in StdoutB64/StderrB64, byte for byte
// (the CLI's --json does the same).
type ExecResult struct {
	ExitCode        int     `json:"exit_code"`
	Stdout          *string `json:"stdout,omitempty"`
	Stderr          *string `json:"stderr,omitempty"`
	StdoutB64       string  `json:"stdout_b64,omitempty"`
	StderrB64       string  `json:"stderr_b64,omitempty"`
	StdoutTruncated bool    `json:"stdout_truncated,omitempty"`
	StderrTruncated bool    `json:"stderr_truncated,omitempty"`
}

// Event is one line of an NDJSON stream (streamed exec, image build,
// console follow is plain text instead) and one text message of the exec
// WebSocket.
//
// Streamed exec, server to client: {"type":"stdout","data_b64":...},
// {"type":"stderr","data_b64":...}, then exactly one of
// {"type":"exit","exit_code":N} or {"type":"error","error":{...}}.
//
// Exec WebSocket, client to server after the Exec message:
// {"type":"stdin","data_b64":...}, {"type":"eof"} (stdin closed),
// {"type":"resize","width":W,"height":H}, {"type":"signal","signal":"TERM"};
// server to client as for streamed exec. Binary messages are a shortcut for
// the data events: first byte 0 stdin, 1 stdout, 2 stderr, then the bytes.
//
// Image build: {"type":"progress","message":...} lines, then
// {"type":"result","image":{...}} or {"type":"error","error":{...}}.
type Event struct {
	Type     string       `json:"type"`
	DataB64  string       `json:"data_b64,omitempty"`
	ExitCode *int         `json:"exit_code,omitempty"`
	Width    int          `json:"width,omitempty"`
	Height   int          `json:"height,omitempty"`
	Signal   string       `json:"signal,omitempty"`
	Message  string       `json:"message,omitempty"`
	Image    *image.Image `json:"image,omitempty"`
	Error    *ErrorDetail `json:"error,omitempty"`
}

// Env is GET and PATCH /v1/vms/{id}/env's response; EnvPatch its request.
type Env struct {
	Env map[string]string `json:"env"`
}

// EnvPatch sets Set and then removes Unset.
type EnvPatch struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// Expose is POST /v1/vms/{id}/ports; the response is a smolvm.PortForward.
type Expose struct {
	GuestPort int    `json:"guest_port"`
	HostPort  int    `json:"host_port"`           // 0 = a free port, picked by smolvm
	HostAddr  string `json:"host_addr,omitempty"` // "" = 127.0.0.1
}

// PortList is GET /v1/vms/{id}/ports.
type PortList struct {
	Ports []smolvm.PortForward `json:"ports"`
}

// CreateSnapshot is POST /v1/vms/{id}/snapshots.
type CreateSnapshot struct {
	Name     string `json:"name"`
	DiskOnly bool   `json:"disk_only,omitempty"`
}

// SnapshotList is GET /v1/snapshots.
type SnapshotList struct {
	Snapshots []smolvm.SnapshotInfo `json:"snapshots"`
}

// Fork is POST /v1/vms/{id}/fork; the response is a VMList of the children.
type Fork struct {
	Count int `json:"count"` // 1 if 0
}

// BuildImage is POST /v1/images, answered with an NDJSON event stream. The
// fields are image.BuildOptions' plus the name.
type BuildImage struct {
	Name           string   `json:"name"`
	From           string   `json:"from"`
	SizeMiB        int      `json:"size_mib,omitempty"`
	Password       string   `json:"password,omitempty"`
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
	Packages       []string `json:"packages,omitempty"`
	Mirror         string   `json:"mirror,omitempty"`
	SHA256         string   `json:"sha256,omitempty"`
	Insecure       bool     `json:"insecure,omitempty"`
	Force          bool     `json:"force,omitempty"`
}

// ImageList is GET /v1/images; its elements are image.Image.
type ImageList struct {
	Images []image.Image `json:"images"`
}

// Checks is GET /v1/doctor.
type Checks struct {
	Checks []smolvm.Check `json:"checks"`
}
