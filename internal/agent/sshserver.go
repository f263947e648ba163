package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults for ServerConfig's zero values.
const (
	DefaultEnvFile     = "/etc/smolvm/env.json"
	DefaultProfileFile = "/etc/profile.d/smolvm_env.sh"
	DefaultHomeDir     = "/root"
	defaultShell       = "/bin/sh"
	passwdFile         = "/etc/passwd"

	// handshakeTimeout bounds how long an unauthenticated connection may
	// hold a goroutine and a socket before it proves who it is.
	handshakeTimeout = 30 * time.Second
	// dialTimeout bounds direct-tcpip dials so a black-holed destination
	// fails the forward instead of hanging the client.
	dialTimeout = 10 * time.Second
)

// ServerConfig configures the guest SSH server. Zero values of the optional
// fields select the documented defaults.
type ServerConfig struct {
	// HostKey identifies the guest; the host pins its public half. Required.
	HostKey ssh.Signer
	// AuthorizedKeys may log in under any user name; sessions run as root.
	// Required.
	AuthorizedKeys []ssh.PublicKey
	// EnvFile is the persistent environment store, a JSON object of
	// string to string. Default DefaultEnvFile.
	EnvFile string
	// ProfileFile receives a shell-sourceable copy of the store whenever it
	// changes, if its directory exists, so that `su -` login shells see the
	// same variables. Default DefaultProfileFile.
	ProfileFile string
	// Shell runs commands. Default: root's shell from /etc/passwd, else /bin/sh.
	Shell string
	// HomeDir is HOME and the working directory of commands; it is created
	// if missing. Default DefaultHomeDir.
	HomeDir string
	// PasswordHashFile holds a bcrypt hash of root's password. When it
	// exists at NewServer time, user "root" may also log in with that
	// password; empty or missing = keys only.
	PasswordHashFile string
	// AuthorizedKeysFile holds more keys (authorized_keys format) that may
	// log in, read at each attempt so edits take effect at once; empty =
	// none.
	AuthorizedKeysFile string
	// Reaper, when set, starts the commands' processes: PID 1 runs the
	// server in-process and must not reap what the server waits for.
	Reaper *Reaper
	// Poweroff is called in its own goroutine after the server has answered
	// a "poweroff@smolvm" global request. Nil refuses the request.
	Poweroff func()
	// Logger receives diagnostics. Nil discards them.
	Logger *slog.Logger
}

// Validate reports whether the required fields are set.
func (c *ServerConfig) Validate() error {
	if c.HostKey == nil {
		return errors.New("agent: ssh server: HostKey is required")
	}
	if len(c.AuthorizedKeys) == 0 {
		return errors.New("agent: ssh server: at least one AuthorizedKeys entry is required")
	}
	return nil
}

// Server is the guest side of smolvm's host-to-guest channel: an SSH server
// that runs commands as root, serves SFTP, forwards TCP and manages the
// persistent environment.
type Server struct {
	shell   string
	homeDir string
	env     *envStore
	secrets secretStore // start secrets, in memory only
	// bootEnv is what the host sets for every command (the user-mode
	// egress proxy), at boot and at a clone's new identity; stored
	// variables override it.
	bootEnv  atomic.Pointer[map[string]string]
	poweroff func()
	reaper   *Reaper
	procs    *procTable // background processes (smolvm-proc)
	log      *slog.Logger
	// sshConf is swapped whole by SetKeys; each connection takes the one
	// current when it arrives.
	sshConf            atomic.Pointer[ssh.ServerConfig]
	authorizedKeysFile string
	password           func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error)
}

// commandVars are the variables of a command's environment besides the
// fixed base: the boot's, the stored ones over them, the start secrets
// over those.
func (s *Server) commandVars(stored map[string]string) map[string]string {
	if boot := s.bootEnv.Load(); boot != nil && len(*boot) > 0 {
		merged := maps.Clone(*boot)
		maps.Copy(merged, stored)
		stored = merged
	}
	return s.secrets.overlay(stored)
}

// startProcess starts cmd, through the reaper when there is one.
func (s *Server) startProcess(cmd *exec.Cmd) error {
	if s.reaper != nil {
		return s.reaper.Start(cmd)
	}
	return cmd.Start()
}

// processDone tells the reaper a started process has been waited for.
func (s *Server) processDone(pid int) {
	if s.reaper != nil {
		s.reaper.Done(pid)
	}
}

// NewServer validates cfg, fills in defaults and creates HomeDir.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.EnvFile == "" {
		cfg.EnvFile = DefaultEnvFile
	}
	if cfg.ProfileFile == "" {
		cfg.ProfileFile = DefaultProfileFile
	}
	if cfg.HomeDir == "" {
		cfg.HomeDir = DefaultHomeDir
	}
	if cfg.Shell == "" {
		cfg.Shell = rootShell(passwdFile)
	}
	if err := os.MkdirAll(cfg.HomeDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: ssh server: create home: %w", err)
	}

	var password func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error)
	if cfg.PasswordHashFile != "" {
		if hash, err := os.ReadFile(cfg.PasswordHashFile); err == nil && len(bytes.TrimSpace(hash)) > 0 {
			password = passwordCallback(bytes.TrimSpace(hash))
		}
	}
	srv := &Server{
		shell:              cfg.Shell,
		homeDir:            cfg.HomeDir,
		env:                &envStore{path: cfg.EnvFile, profilePath: cfg.ProfileFile},
		poweroff:           cfg.Poweroff,
		reaper:             cfg.Reaper,
		log:                log,
		authorizedKeysFile: cfg.AuthorizedKeysFile,
		password:           password,
	}
	srv.procs = newProcTable(srv)
	srv.sshConf.Store(srv.newSSHConfig(cfg.HostKey, cfg.AuthorizedKeys))
	return srv, nil
}

// newSSHConfig is the server configuration for a host key and the keys
// that may log in (besides AuthorizedKeysFile's and the password).
func (s *Server) newSSHConfig(hostKey ssh.Signer, authorizedKeys []ssh.PublicKey) *ssh.ServerConfig {
	// Marshal once: authentication compares wire encodings.
	authorized := make([][]byte, len(authorizedKeys))
	for i, k := range authorizedKeys {
		authorized[i] = k.Marshal()
	}
	file := s.authorizedKeysFile
	conf := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-smolvm",
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			wire := key.Marshal()
			for _, a := range authorized {
				if bytes.Equal(a, wire) {
					return &ssh.Permissions{}, nil
				}
			}
			if file != "" && fileAuthorizes(file, wire) {
				return &ssh.Permissions{}, nil
			}
			return nil, fmt.Errorf("agent: ssh server: key %s not authorized", ssh.FingerprintSHA256(key))
		},
		PasswordCallback: s.password,
	}
	conf.AddHostKey(hostKey)
	return conf
}

// SetKeys replaces the host key and the authorized keys (those of
// ServerConfig.AuthorizedKeys; AuthorizedKeysFile and the password stay)
// for every connection from now on, at once: a new connection sees the
// old pair or the new one, never a mix. Open connections keep theirs.
func (s *Server) SetKeys(hostKey ssh.Signer, authorizedKeys []ssh.PublicKey) error {
	if hostKey == nil || len(authorizedKeys) == 0 {
		return errors.New("agent: ssh server: a host key and at least one authorized key are required")
	}
	s.sshConf.Store(s.newSSHConfig(hostKey, authorizedKeys))
	return nil
}

// rootShell returns root's login shell from the passwd file at path, or
// /bin/sh when there is none or it does not exist in this root filesystem.
func rootShell(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return defaultShell
	}
	defer f.Close()
	sh := parseRootShell(f)
	if sh == "" {
		return defaultShell
	}
	if _, err := os.Stat(sh); err != nil {
		return defaultShell
	}
	return sh
}

// parseRootShell returns the shell field of the uid-0 entry in passwd(5)
// content, or "" when there is none.
func parseRootShell(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) == 7 && f[2] == "0" {
			return strings.TrimSpace(f[6])
		}
	}
	return ""
}

// Serve accepts connections on ln until ctx is done or ln fails. It closes
// ln, tears down every connection (killing the commands they run) and waits
// for them before returning: nil after ctx is done, else the accept error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if transientAcceptError(err) {
				// Out of fds or memory: back off rather than spin or give
				// up on the guest's only way in.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("ssh accept", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("agent: ssh server: accept: %w", err)
		}
		backoff = 0
		wg.Go(func() { s.serveConn(ctx, nc) })
	}
}

func transientAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// serveConn runs one client connection until it drops or ctx is done.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	defer nc.Close()
	log := s.log.With("remote", nc.RemoteAddr().String())

	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	conn, chans, reqs, err := ssh.NewServerConn(nc, s.sshConf.Load())
	if err != nil {
		log.Debug("ssh handshake failed", "err", err)
		return
	}
	_ = nc.SetDeadline(time.Time{})
	log.Debug("ssh connection open", "user", conn.User())

	var wg sync.WaitGroup
	wg.Go(func() { s.globalRequests(reqs) })
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			wg.Go(func() { s.handleSession(nch, log) })
		case "direct-tcpip":
			wg.Go(func() { s.handleDirectTCPIP(ctx, nch, log) })
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
	// chans closes once the connection is gone; every channel is closed with
	// it, so the handlers are now tearing down.
	conn.Close()
	wg.Wait()
	log.Debug("ssh connection closed")
}

// globalRequests answers connection-level requests. Anything but poweroff
// is refused, but still answered, because OpenSSH's keepalives
// (keepalive@openssh.com) only need some reply to count the server alive.
func (s *Server) globalRequests(reqs <-chan *ssh.Request) {
	for req := range reqs {
		if req.Type == "poweroff@smolvm" && s.poweroff != nil {
			_ = req.Reply(true, nil)
			s.log.Info("poweroff requested over ssh")
			go s.poweroff()
			continue
		}
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
}

// handleDirectTCPIP serves an `ssh -L` forward: it dials the requested
// address from inside the guest and proxies bytes both ways, keeping
// half-closes so request/response protocols see the peer's EOF.
func (s *Server) handleDirectTCPIP(ctx context.Context, nch ssh.NewChannel, log *slog.Logger) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	addr := net.JoinHostPort(p.Host, strconv.FormatUint(uint64(p.Port), 10))
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		log.Debug("direct-tcpip dial failed", "addr", addr, "err", err)
		_ = nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer conn.Close()
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		wg.Go(func() {
			_, _ = io.Copy(conn, ch)
			if cw, ok := conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		})
		wg.Go(func() {
			_, _ = io.Copy(ch, conn)
			_ = ch.CloseWrite()
		})
		wg.Wait()
		// Both directions have seen EOF: the forward is finished.
		_ = ch.Close()
	}()
	for req := range reqs {
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
	// The client closed the channel (or the connection dropped): unblock
	// the copier that may still wait on the guest-side socket.
	conn.Close()
	<-done
}
