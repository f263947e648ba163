package smolvm

import (
	"context"
	"github.com/smolvm/smolvm/internal/guest"
	"time"
)

// WatchOp is what happened to a watched path.
type WatchOp string

const (
	WatchCreate WatchOp = "create"
	// WatchModify: a file was written. A writer's first write since the
	// file was last closed is reported at once; if it writes more before
	// closing, the close is reported too, so a file written whole in one
	// go gives one event and a long-running writer at least two.
	WatchModify WatchOp = "modify"
	WatchRemove WatchOp = "remove"
	// WatchRename: OldPath was renamed to Path, both inside the watched
	// tree. A rename out of the tree is a WatchRemove, one into it a
	// WatchCreate.
	WatchRename WatchOp = "rename"
	// WatchOverflow: events were lost, in the guest (its inotify queue)
	// or on the host (Dropped of them, the callback being slower than the
	// guest). Rescan what matters.
	WatchOverflow WatchOp = "overflow"
)

// WatchEvent is one change in a watched guest directory. Paths are
// relative to the watched directory, slash-separated; "." is the
// directory itself (its removal ends the watch).
type WatchEvent struct {
	Op      WatchOp `json:"op"`
	Path    string  `json:"path,omitempty"`
	OldPath string  `json:"old_path,omitempty"`
	Dir     bool    `json:"dir,omitempty"` // the path is a directory
	Dropped int     `json:"dropped,omitempty"`
	Message string  `json:"message,omitempty"`
	// Time is when the host received the event.
	Time time.Time `json:"time"`
}

// WatchOptions adjusts Watch.
type WatchOptions struct {
	// Recursive watches subdirectories too, also those made later.
	Recursive bool
	// Ready, if set, is called once the guest watches everything asked
	// for, before any event: a change made after it is seen.
	Ready func()
}

// Watch calls fn with every change in the guest directory dir until ctx
// is done (it then returns ctx.Err()) or dir is removed (nil, after a
// WatchRemove of "."). A missing dir matches fs.ErrNotExist, a file
// syscall.ENOTDIR. fn runs on one goroutine, one event at a time; events
// that arrive while it is busy wait in a bounded queue, and past that are
// dropped and reported as one WatchOverflow with Dropped set, so a guest
// that changes files faster than fn takes them costs the host bounded
// memory. Watch returns only after fn's last call has. It needs the
// guest's smolvm-watch agent (inotify).
func (f *FS) Watch(ctx context.Context, dir string, opts WatchOptions, fn func(WatchEvent)) error {
	if err := fsPath(dir, true); err != nil {
		return opError("watch", f.vm.id, err)
	}
	c, err := f.client(ctx, "watch")
	if err != nil {
		return err
	}
	err = c.Watch(ctx, dir, guest.WatchOptions{Recursive: opts.Recursive, Ready: opts.Ready}, func(e guest.WatchEvent) {
		fn(WatchEvent{Op: WatchOp(e.Op), Path: e.Path, OldPath: e.Old, Dir: e.Dir, Dropped: e.Dropped, Message: e.Message, Time: time.Now()})
	})
	if err != nil && ctx.Err() != nil && err == ctx.Err() {
		return err
	}
	return opError("watch", f.vm.id, err)
}
