package guest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smolvm/smolvm/internal/unixsock"
	"golang.org/x/sys/unix"
)

const (
	// DefaultControlTimeout bounds a control call whose ctx has no
	// deadline. The agent answers in milliseconds; a guest that does not
	// is frozen or hostile.
	DefaultControlTimeout = 10 * time.Second
	// MaxControlAnswer bounds what one call reads from the guest, skipped
	// stale answers included.
	MaxControlAnswer = 64 << 10
	// seedSize is the RNG seed a clone gets.
	seedSize = 64
)

// ErrControlProtocol means the guest's answer on the control port was not
// one: garbage, oversized, or out of step. The Control is closed.
var ErrControlProtocol = errors.New("guest: control port: malformed answer")

// ControlError is the guest's refusal of a control request.
type ControlError struct {
	Op  string // "identity", "ping"
	Msg string // the agent's reason
}

func (e *ControlError) Error() string {
	return fmt.Sprintf("guest: control %s: the guest refused: %s", e.Op, e.Msg)
}

// Identity is what makes a VM a machine of its own, for a clone restored
// from another VM's snapshot. Zero fields are left as they are in the
// guest; a clone needs them all.
type Identity struct {
	Hostname string
	// Address is eth0's IPv4 address and prefix; it replaces the old one.
	Address netip.Prefix
	// Gateway is the default route (requires Address).
	Gateway netip.Addr
	// MAC is eth0's new address, like "02:00:00:00:00:01".
	MAC string
	// DNS replaces /etc/resolv.conf's name servers when not empty.
	DNS []netip.Addr
	// Proxy, when not empty, replaces the HTTP proxy commands get in
	// their environment: ADDR:PORT, or "off" for none (a clone of a
	// user-mode VM's snapshot running with TAP networking).
	Proxy string
	// HostKeyPEM is the SSH server's new host key (a PEM private key, as
	// GenerateKey makes), AuthorizedKeys the authorized_keys line(s) of
	// the clients it accepts from then on. Both or neither.
	HostKeyPEM     []byte
	AuthorizedKeys []byte
	// MachineID is /etc/machine-id: 32 lowercase hex digits.
	MachineID string
	// Seed is mixed into the guest's random generator and credited as
	// entropy: 64 random bytes, NewSeed.
	Seed []byte
	// Time sets the guest's clock (CLOCK_REALTIME).
	Time time.Time
}

// NewSeed returns a fresh random seed for Identity.Seed.
func NewSeed() ([]byte, error) {
	b := make([]byte, seedSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("guest: seed: %w", err)
	}
	return b, nil
}

// NewMachineID returns a fresh random machine id for Identity.MachineID.
func NewMachineID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("guest: machine id: %w", err)
	}
	return fmt.Sprintf("%x", b), nil
}

// controlRequest mirrors internal/agent's request on the wire.
type controlRequest struct {
	ID             uint64       `json:"id"`
	Op             string       `json:"op"`
	Hostname       string       `json:"hostname,omitempty"`
	Address        netip.Prefix `json:"address,omitzero"`
	Gateway        netip.Addr   `json:"gateway,omitzero"`
	MAC            string       `json:"mac,omitempty"`
	DNS            []netip.Addr `json:"dns,omitempty"`
	HostKey        []byte       `json:"host_key,omitempty"`
	AuthorizedKeys []byte       `json:"authorized_keys,omitempty"`
	MachineID      string       `json:"machine_id,omitempty"`
	Seed           []byte       `json:"seed,omitempty"`
	TimeUnixNano   int64        `json:"time_unix_nano,omitempty"`
	Proxy          string       `json:"proxy,omitempty"`
}

type controlAnswer struct {
	ID    *uint64 `json:"id"`
	OK    bool    `json:"ok"`
	Error string  `json:"error"`
}

// Control is a connection to a guest agent's control port (the VM's
// agent.sock), which works before and regardless of the network: it is
// how a clone learns its identity. Calls are serialised. After a failure
// other than the guest's refusal, the Control is closed: dial again.
type Control struct {
	conn net.Conn
	br   *bufio.Reader

	mu     sync.Mutex
	nextID uint64
	sent   bool // whether a request went out on this connection
	broken error

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// DialControl connects to the control port's host end, the UNIX socket at
// socketPath (which may exceed the 108 bytes of a socket address). QEMU
// holds one host connection at a time: a second waits, unanswered, until
// the first is closed.
func DialControl(ctx context.Context, socketPath string) (*Control, error) {
	var conn net.Conn
	err := unixsock.Path(socketPath, func(p string) error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "unix", p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("guest: control port %s: %w", socketPath, err)
	}
	var seed [8]byte
	rand.Read(seed[:])
	return &Control{
		conn: conn,
		// One byte more than an answer may have, so a longer line is
		// seen as such without reading it all.
		br: bufio.NewReaderSize(conn, MaxControlAnswer+1),
		// A random first id: answers meant for an earlier connection,
		// which the guest may deliver late, never match ours.
		nextID: binary.LittleEndian.Uint64(seed[:]) >> 1,
	}, nil
}

// Close closes the connection, ending a call in flight with ErrClosed.
func (c *Control) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.closeErr = c.conn.Close()
	})
	return c.closeErr
}

// Ping checks that the agent answers.
func (c *Control) Ping(ctx context.Context) error {
	return c.call(ctx, controlRequest{Op: "ping"})
}

// Identity makes the guest the machine id describes. The guest applies,
// in order: clock, random generator, hostname (and /etc/hostname),
// /etc/machine-id, eth0's MAC, address, default route and name servers
// (with a gratuitous ARP), and last the SSH host key and authorized keys
// for new connections (open ones keep theirs). The guest checks the whole
// request before it changes anything; a failure in a step stops there.
func (c *Control) Identity(ctx context.Context, id Identity) error {
	if err := id.validate(); err != nil {
		return err
	}
	req := controlRequest{
		Op: "identity", Hostname: id.Hostname, Address: id.Address, Gateway: id.Gateway, MAC: id.MAC,
		DNS: id.DNS, HostKey: id.HostKeyPEM, AuthorizedKeys: id.AuthorizedKeys, MachineID: id.MachineID, Seed: id.Seed,
		Proxy: id.Proxy,
	}
	if !id.Time.IsZero() {
		req.TimeUnixNano = id.Time.UnixNano()
	}
	return c.call(ctx, req)
}

// validate catches the host's own mistakes with a clear message before
// anything is sent; the agent checks everything again.
func (id Identity) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("guest: identity: "+format, args...)
	}
	if id.Address.IsValid() && !id.Address.Addr().Is4() {
		return bad("address %s: want an IPv4 prefix like 10.0.0.2/24", id.Address)
	}
	if id.Gateway.IsValid() && (!id.Gateway.Is4() || !id.Address.IsValid()) {
		return bad("gateway %s: want an IPv4 address, with Address set", id.Gateway)
	}
	if id.MAC != "" {
		if mac, err := net.ParseMAC(id.MAC); err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return bad("mac %q: want a unicast Ethernet address like 02:00:00:00:00:01", id.MAC)
		}
	}
	if (len(id.HostKeyPEM) == 0) != (len(id.AuthorizedKeys) == 0) {
		return bad("set HostKeyPEM and AuthorizedKeys together")
	}
	if id.MachineID != "" && (len(id.MachineID) != 32 || strings.Trim(id.MachineID, "0123456789abcdef") != "") {
		return bad("machine id %q: want 32 lowercase hex digits (NewMachineID)", id.MachineID)
	}
	if len(id.Seed) > 0 && len(id.Seed) < 32 {
		return bad("seed of %d bytes: want %d (NewSeed)", len(id.Seed), seedSize)
	}
	if !id.Time.IsZero() && id.Time.Before(time.Unix(0, 1)) {
		return bad("time %s is before 1970", id.Time)
	}
	return nil
}

// call sends req and waits for its answer, within ctx and the default
// bound, reading at most MaxControlAnswer bytes.
func (c *Control) call(ctx context.Context, req controlRequest) (err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("guest: control %s: out of step after an earlier failure (%v): %w", req.Op, c.broken, ErrClosed)
	}
	if c.closed.Load() {
		return fmt.Errorf("guest: control %s: %w", req.Op, ErrClosed)
	}
	defer func() {
		// The stream may be out of step now: no later call may trust it.
		var refused *ControlError
		if err != nil && !errors.As(err, &refused) {
			c.broken = err
			c.Close()
		}
	}()
	deadline, bounded := ctx.Deadline()
	ownBound := !bounded
	if ownBound {
		deadline = time.Now().Add(DefaultControlTimeout)
	}
	c.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) error {
		switch {
		case c.closed.Load():
			err = ErrClosed
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded) && ownBound:
			err = fmt.Errorf("no answer within %v: %w", DefaultControlTimeout, ErrUnresponsive)
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = context.DeadlineExceeded // ctx's, a hair before ctx says so
		case errors.Is(err, io.EOF), errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
			err = fmt.Errorf("the guest hung up (%v): %w", err, ErrClosed)
		}
		return fmt.Errorf("guest: control %s: %w", req.Op, err)
	}

	req.ID = c.nextID
	c.nextID++
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("guest: control %s: %w", req.Op, err)
	}
	line = append(line, '\n')
	if !c.sent {
		// An earlier host may have left half a line in the guest's
		// buffer; a newline first ends it, so it cannot swallow ours.
		line = append([]byte{'\n'}, line...)
		c.sent = true
	}
	if _, err := c.conn.Write(line); err != nil {
		return fail(err)
	}
	read := 0
	for {
		ans, err := c.br.ReadSlice('\n')
		read += len(ans)
		if errors.Is(err, bufio.ErrBufferFull) || read > MaxControlAnswer {
			return fmt.Errorf("guest: control %s: answer longer than %d bytes: %w", req.Op, MaxControlAnswer, ErrControlProtocol)
		}
		if err != nil {
			return fail(err)
		}
		var a controlAnswer
		if err := json.Unmarshal(ans, &a); err != nil || a.ID == nil || a.OK == (a.Error != "") {
			return fmt.Errorf("guest: control %s: answer %.80q: %w", req.Op, ans, ErrControlProtocol)
		}
		if *a.ID != req.ID {
			continue // meant for a request of an earlier connection
		}
		if a.Error != "" {
			return &ControlError{Op: req.Op, Msg: a.Error}
		}
		return nil
	}
}
