package mcpserver

import (
	"time"

	"github.com/smolvm/smolvm"
)

// The tools' inputs and outputs. Their `jsonschema` tags are what an
// agent reads about each field; `schema` tags add bounds and defaults
// (see inputSchema).

// sandbox is how tools describe a VM.
type sandbox struct {
	ID           string    `json:"id"`
	State        string    `json:"state"`
	Image        string    `json:"image,omitempty" jsonschema:"the image it was made from; empty = the default (Alpine Linux)"`
	FromSnapshot string    `json:"from_snapshot,omitempty"`
	VCPUs        int       `json:"vcpus"`
	MemoryMiB    int       `json:"memory_mib"`
	DiskMiB      int       `json:"disk_mib"`
	IP           string    `json:"ip,omitempty"`
	Kept         bool      `json:"kept" jsonschema:"true if it outlives the MCP session that made it"`
	ThisSession  bool      `json:"this_session" jsonschema:"true if this session made it"`
	CreatedAt    time.Time `json:"created_at"`
}

func describe(info smolvm.VMInfo, kept, here bool) sandbox {
	return sandbox{
		ID: info.ID, State: string(info.State), Image: info.Config.Image, FromSnapshot: info.FromSnapshot,
		VCPUs: info.Config.VCPUs, MemoryMiB: info.Config.MemoryMiB, DiskMiB: info.Config.DiskMiB,
		IP: info.Network.GuestIP, Kept: kept, ThisSession: here, CreatedAt: info.CreatedAt,
	}
}

type createIn struct {
	Image        string `json:"image,omitempty" jsonschema:"name of an image built with 'smolvm image build'; omit for the default, Alpine Linux with a root shell (apk add installs packages when the sandbox has network)"`
	VCPUs        int    `json:"vcpus,omitempty" jsonschema:"virtual CPUs; 0 = 1. At most the host's CPUs" schema:"minimum=0,maximum=64,default=0"`
	MemoryMiB    int    `json:"memory_mib,omitempty" jsonschema:"memory in MiB; 0 = 512. At least 128, at most the host's RAM" schema:"minimum=0,maximum=262144,default=0"`
	DiskMiB      int    `json:"disk_mib,omitempty" jsonschema:"root disk size in MiB; 0 = 512 or the image's size. At least 64" schema:"minimum=0,maximum=2097152,default=0"`
	FromSnapshot string `json:"from_snapshot,omitempty" jsonschema:"start a copy of this snapshot (see snapshot_sandbox and list_sandboxes) instead of a fresh machine: processes, memory and files as at the capture. Sizes and image then come from the snapshot"`
	Name         string `json:"name,omitempty" jsonschema:"the sandbox id: letters, digits, '.', '_' or '-', up to 63; omit for a generated one" schema:"pattern=^[A-Za-z0-9][A-Za-z0-9._-]*$,maxLength=63"`
	Keep         bool   `json:"keep,omitempty" jsonschema:"keep the sandbox after this MCP session ends (default false: it is deleted then)" schema:"default=false"`
}

type runIn struct {
	Sandbox        string  `json:"sandbox" jsonschema:"the sandbox id, from create_sandbox or list_sandboxes"`
	Command        string  `json:"command" jsonschema:"a shell command line, run by /bin/sh -c as root in the sandbox, e.g. 'cd /src && make test 2>&1'"`
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty" jsonschema:"kill the command after this many seconds (default 60, at most 3600); for longer jobs start them in the background with nohup and poll" schema:"minimum=0.1,maximum=3600,default=60"`
	Stdin          string  `json:"stdin,omitempty" jsonschema:"text fed to the command's standard input (default: none, stdin is empty)" schema:"maxLength=1048576"`
	MaxOutputBytes int     `json:"max_output_bytes,omitempty" jsonschema:"how many bytes of each of stdout and stderr to return (default 32768, at most 1048576); the command still runs to the end, the rest is dropped and the result says so" schema:"minimum=1,maximum=1048576,default=32768"`
}

type runOut struct {
	ExitCode int    `json:"exit_code" jsonschema:"the command's exit status; -1 if it was killed by the timeout"`
	Stdout   string `json:"stdout" jsonschema:"standard output as UTF-8 text (bytes that are not valid UTF-8 shown as U+FFFD, then stdout_base64 has them exactly)"`
	Stderr   string `json:"stderr"`
	// The exact bytes, when they were not valid UTF-8.
	StdoutBase64    string  `json:"stdout_base64,omitempty"`
	StderrBase64    string  `json:"stderr_base64,omitempty"`
	StdoutTruncated bool    `json:"stdout_truncated,omitempty" jsonschema:"stdout was longer than max_output_bytes and was cut"`
	StderrTruncated bool    `json:"stderr_truncated,omitempty"`
	StdoutBytes     int64   `json:"stdout_bytes" jsonschema:"how many bytes the command wrote to stdout in all"`
	StderrBytes     int64   `json:"stderr_bytes"`
	TimedOut        bool    `json:"timed_out,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`
}

type writeIn struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox id"`
	Path     string `json:"path" jsonschema:"absolute path of the file in the sandbox, e.g. /root/app.py; missing directories are made, an existing file is replaced"`
	Content  string `json:"content" jsonschema:"the file's content: text, or base64 when encoding is base64 (at most 8 MiB once decoded)" schema:"maxLength=11184812"`
	Encoding string `json:"encoding,omitempty" jsonschema:"text (default) or base64, for binary content" schema:"enum=text|base64,default=text"`
	Mode     string `json:"mode,omitempty" jsonschema:"octal permissions, e.g. 0755 for a script (default 0644)" schema:"pattern=^0?[0-7]{3}$,default=0644"`
}

type writeOut struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

type readIn struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox id"`
	Path     string `json:"path" jsonschema:"absolute path of a regular file in the sandbox"`
	Offset   int64  `json:"offset,omitempty" jsonschema:"start reading at this byte (default 0), to page through a big file" schema:"minimum=0,default=0"`
	MaxBytes int    `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes (default 65536, at most 1048576); the result says when the file goes on" schema:"minimum=1,maximum=1048576,default=65536"`
}

type readOut struct {
	Path          string `json:"path"`
	Offset        int64  `json:"offset"`
	Bytes         int    `json:"bytes" jsonschema:"bytes returned"`
	Content       string `json:"content" jsonschema:"the bytes as UTF-8 text (invalid bytes shown as U+FFFD; then content_base64 has them exactly)"`
	ContentBase64 string `json:"content_base64,omitempty"`
	Truncated     bool   `json:"truncated" jsonschema:"the file goes on past what was returned: read again with offset = offset + bytes"`
}

type listIn struct{}

type listOut struct {
	Sandboxes []sandbox  `json:"sandboxes"`
	Snapshots []snapshot `json:"snapshots"`
}

type snapshotIn struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox id"`
	Name     string `json:"name" jsonschema:"the snapshot's name, to pass as from_snapshot to create_sandbox later" schema:"pattern=^[A-Za-z0-9][A-Za-z0-9._-]*$,maxLength=63"`
	DiskOnly bool   `json:"disk_only,omitempty" jsonschema:"capture the disk only (default false: memory and disk, so copies resume running processes)"`
}

type snapshot struct {
	Name      string    `json:"name"`
	Source    string    `json:"source_sandbox"`
	DiskOnly  bool      `json:"disk_only,omitempty"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskMiB   int       `json:"disk_mib"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func describeSnapshot(i *smolvm.SnapshotInfo) snapshot {
	return snapshot{Name: i.Name, Source: i.SourceVM, DiskOnly: i.DiskOnly, VCPUs: i.VCPUs,
		MemoryMiB: i.MemoryMiB, DiskMiB: i.DiskMiB, SizeBytes: i.SizeBytes, CreatedAt: i.CreatedAt}
}

type forkIn struct {
	Sandbox string `json:"sandbox" jsonschema:"the running sandbox to copy; it goes on unchanged"`
	Count   int    `json:"count,omitempty" jsonschema:"how many copies (default 1, at most 8)" schema:"minimum=1,maximum=8,default=1"`
	Keep    bool   `json:"keep,omitempty" jsonschema:"keep the copies after this MCP session ends (default false)" schema:"default=false"`
}

type forkOut struct {
	Sandboxes []sandbox `json:"sandboxes"`
}

type deleteIn struct {
	Sandbox string `json:"sandbox" jsonschema:"the sandbox id"`
}

type deleteSnapshotIn struct {
	Name string `json:"name" jsonschema:"the snapshot's name"`
}

type deleted struct {
	Deleted string `json:"deleted"`
}
