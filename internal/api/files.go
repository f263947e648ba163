package api

import "github.com/smolvm/smolvm"

// FileMtimeHeader carries a downloaded file's modification time (RFC
// 3339, to the second: SFTP's precision).
const FileMtimeHeader = "X-Smolvm-Mtime"

// FileList is GET /v1/vms/{id}/files/list?path=P.
type FileList struct {
	Entries []smolvm.FileInfo `json:"entries"`
}

// Mkdir is POST /v1/vms/{id}/files/mkdir.
type Mkdir struct {
	Path    string `json:"path"`
	Parents bool   `json:"parents,omitempty"` // mkdir -p
	Perm    uint32 `json:"perm,omitempty"`    // permission bits; 0 = 0755
}

// Rename is POST /v1/vms/{id}/files/rename.
type Rename struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// WatchEvent is one line of GET /v1/vms/{id}/files/watch's NDJSON
// stream: a smolvm.WatchEvent, or, last, {"op":"error","error":{...}}
// when the watch ended in error after the stream began.
type WatchEvent struct {
	smolvm.WatchEvent
	Error *ErrorDetail `json:"error,omitempty"`
}
