// Package unixsock reaches UNIX sockets at paths longer than a socket
// address holds.
package unixsock

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// maxPath is what fits in sockaddr_un.sun_path with its NUL.
var maxPath = len(unix.RawSockaddrUnix{}.Path) - 1

// Path calls fn with a path that reaches path and fits a UNIX socket
// address: path itself, or /proc/self/fd/N/NAME through a descriptor of its
// directory when a long state directory would overflow sun_path.
func Path(path string, fn func(string) error) error {
	if len(path) <= maxPath {
		return fn(path)
	}
	i := strings.LastIndexByte(path, '/')
	dir, base := path[:i+1], path[i+1:]
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	return fn("/proc/self/fd/" + strconv.Itoa(fd) + "/" + base)
}
