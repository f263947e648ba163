package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/statedir"
	"github.com/smolvm/smolvm/internal/unixsock"
)

// ErrServing is returned by ListenUnix when another server already serves
// the socket.
var ErrServing = errors.New("another smolvm serve is already serving it")

// Listener is one address the server serves, with the bearer token its
// requests need ("" = none, for the owner-only UNIX socket).
type Listener struct {
	net.Listener
	Token string
	// Addr is what clients put in SMOLVM_HOST: unix:///path or tcp://host:port.
	URL string
}

// ListenUnix listens on the UNIX socket at path, mode 0600. It refuses
// (ErrServing) when another server holds the socket, replaces a stale
// socket file a dead server left, and never removes anything that is not
// a socket. Closing the listener removes the socket and releases it.
func ListenUnix(path string) (*Listener, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, statedir.DirMode); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	// The lock, held for the server's life, settles a race of two servers
	// starting at once; the kernel drops it when the holder dies.
	// O_NOFOLLOW: beside a socket in a shared directory, a planted
	// symlink would have the lock made (or taken) elsewhere.
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, statedir.FileMode)
	if err != nil {
		return nil, fmt.Errorf("socket lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w (stop it, or serve another socket with --socket)", path, ErrServing)
		}
		return nil, fmt.Errorf("lock %s.lock: %w", path, err)
	}
	fail := func(err error) (*Listener, error) { lock.Close(); return nil, err }
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return fail(fmt.Errorf("%s exists and is not a socket: move it away, or serve another socket with --socket", path))
		}
		// A server without the lock (one that predates it) may still answer.
		if answers(path) {
			return fail(fmt.Errorf("%s: %w (stop it, or serve another socket with --socket)", path, ErrServing))
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("remove stale socket: %w", err))
		}
	}
	// Bind in a private directory, set the mode, then rename into place:
	// no moment exists in which the socket is reachable with other modes.
	tmp, err := os.MkdirTemp(dir, ".serve-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	var ln *net.UnixListener
	tmpSock := filepath.Join(tmp, "s")
	err = unixsock.Path(tmpSock, func(p string) error {
		l, err := net.Listen("unix", p)
		if err == nil {
			ln = l.(*net.UnixListener)
		}
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("listen on %s: %w", path, err))
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmpSock, statedir.FileMode); err == nil {
		err = os.Rename(tmpSock, path)
	}
	if err != nil {
		ln.Close()
		return fail(fmt.Errorf("socket %s: %w", path, err))
	}
	fi, _ := os.Lstat(path)
	return &Listener{Listener: &unixListener{UnixListener: ln, path: path, fi: fi, lock: lock}, URL: "unix://" + path}, nil
}

// answers reports whether something accepts connections at the socket.
func answers(path string) bool {
	var ok bool
	unixsock.Path(path, func(p string) error {
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			ok = true
		}
		return nil
	})
	return ok
}

type unixListener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	lock *os.File
}

// Close removes the socket, if it is still this one, and the lock.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && l.fi != nil && os.SameFile(fi, l.fi) {
		os.Remove(l.path)
	}
	l.lock.Close()
	return err
}

// ListenTCP listens on addr (host:port). A host that is not a loopback
// address is refused unless allowRemote: the API runs commands as root in
// VMs and reaches host files, so exposing it is a decision to make
// explicitly. token must not be empty.
func ListenTCP(addr, token string, allowRemote bool) (*Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: want HOST:PORT, such as 127.0.0.1:7070: %w", addr, err)
	}
	if token == "" {
		return nil, errors.New("a TCP listener needs a bearer token")
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return nil, errors.New("the bearer token must be printable ASCII without spaces (it travels in an HTTP header); leave --token out to have one made")
	}
	if !allowRemote && !loopback(host) {
		return nil, fmt.Errorf("--listen %q is not a loopback address: anyone who reaches it with the token controls your VMs; pass --allow-remote too if that is what you want", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return &Listener{Listener: ln, Token: token, URL: "tcp://" + ln.Addr().String()}, nil
}

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadOrCreateToken returns the token kept in file, making a random one
// (mode 0600) when there is none. A token file open to other users is
// refused: anyone could have read it.
func LoadOrCreateToken(file string) (string, error) {
	// O_NOFOLLOW and the checks on what was opened: a symlink or a file
	// of another user holds a token someone else may know.
	if f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0); err == nil {
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || !ok || int(st.Uid) != os.Geteuid() {
			uid := -1
			if ok {
				uid = int(st.Uid)
			}
			return "", fmt.Errorf("token file %s is not a regular file of this user (%v, uid %d): remove it and a new token is made", file, fi.Mode(), uid)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("token file %s is readable by other users (mode %v): remove it and a new token is made", file, fi.Mode().Perm())
		}
		b, err := io.ReadAll(io.LimitReader(f, 4096))
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", fmt.Errorf("token file %s holds a token shorter than 16 characters: remove it and a new token is made", file)
		}
		return tok, nil
	} else if errors.Is(err, syscall.ELOOP) {
		return "", fmt.Errorf("token file %s is a symlink: remove it and a new token is made", file)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("token file: %w", err)
	}
	b := make([]byte, 32)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, statedir.FileMode)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateToken(file) // another server made it meanwhile
	}
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		os.Remove(file)
		return "", fmt.Errorf("token file: %w", err)
	}
	return tok, f.Close()
}

// ShutdownGrace is how long Serve waits, once told to stop, for requests
// in flight before it closes their connections.
const ShutdownGrace = 10 * time.Second

// Serve serves the listeners until ctx is done or, with idle > 0, until
// the server has been idle (no request in flight, no connection open) for
// idle. It then stops accepting, lets requests in flight finish (up to
// ShutdownGrace) and closes the listeners. VMs keep running.
func (s *Server) Serve(ctx context.Context, idle time.Duration, ls ...*Listener) error {
	errc := make(chan error, len(ls))
	servers := make([]*http.Server, len(ls))
	for i, l := range ls {
		hs := &http.Server{
			Handler:           s.Handler(l.Token),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ConnState:         s.connState,
			ErrorLog:          nil,
		}
		servers[i] = hs
		go func() {
			if err := hs.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	s.busy.last.Store(time.Now().UnixNano())
	var tick <-chan time.Time
	if idle > 0 {
		t := time.NewTicker(min(idle/4+time.Millisecond, time.Second))
		defer t.Stop()
		tick = t.C
	}
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-errc:
			break loop
		case <-tick:
			if s.IdleFor() >= idle {
				s.log.Info("idle, exiting", "idle", idle)
				break loop
			}
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
	defer cancel()
	for _, hs := range servers {
		if hs.Shutdown(sctx) != nil {
			hs.Close()
		}
	}
	for _, l := range ls {
		l.Close()
	}
	return err
}
