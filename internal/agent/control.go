package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// ControlPortName is the name of the virtio serial port the host's control
// channel arrives on (hypervisor.AgentPort on the host side).
const ControlPortName = "smolvm.agent"

// MaxControlLine bounds one request line. The host is trusted, but a bug
// there must cost an error answer, not the guest's memory.
const MaxControlLine = 1 << 20

// The control protocol: newline-delimited JSON, one request, one answer
// carrying the request's id (the host skips answers to requests of an
// earlier connection that the guest could only deliver late).
type controlRequest struct {
	ID uint64 `json:"id"`
	Op string `json:"op"` // "ping" or "identity"
	IdentityRequest
}

type controlAnswer struct {
	ID    uint64 `json:"id"`
	OK    bool   `json:"ok,omitempty"`
	Error string `json:"error,omitempty"`
}

// IdentityRequest is an "identity" request's payload as it travels. Zero
// fields are left as they are.
type IdentityRequest struct {
	Hostname       string       `json:"hostname,omitempty"`
	Address        netip.Prefix `json:"address,omitzero"` // IPv4 address and prefix of eth0
	Gateway        netip.Addr   `json:"gateway,omitzero"`
	MAC            string       `json:"mac,omitempty"`
	DNS            []netip.Addr `json:"dns,omitempty"`
	HostKey        []byte       `json:"host_key,omitempty"`        // PEM private key
	AuthorizedKeys []byte       `json:"authorized_keys,omitempty"` // authorized_keys lines
	MachineID      string       `json:"machine_id,omitempty"`
	Seed           []byte       `json:"seed,omitempty"` // RNG seed, credited as entropy
	TimeUnixNano   int64        `json:"time_unix_nano,omitempty"`
	Proxy          string       `json:"proxy,omitempty"` // ADDR:PORT, or "off"
}

// Identity is a validated IdentityRequest, ready to apply. Zero fields are
// left as they are.
type Identity struct {
	Hostname       string
	Address        netip.Prefix
	Gateway        netip.Addr
	MAC            net.HardwareAddr
	DNS            []netip.Addr
	HostKey        ssh.Signer
	AuthorizedKeys []ssh.PublicKey
	MachineID      string
	Seed           []byte
	Time           time.Time
	// Proxy, if not nil, is the HTTP proxy commands get from now on; an
	// invalid (zero) one is none.
	Proxy *netip.AddrPort
}

// Bounds of the seed: below 32 bytes it could not make a clone's generator
// its own; RNDADDENTROPY takes far more, but nothing needs it.
const (
	minSeed = 32
	maxSeed = 4096
)

// Parse validates r. Everything is checked before anything is applied, so
// a bad request changes nothing.
func (r IdentityRequest) Parse() (Identity, error) {
	var id Identity
	if r.Hostname != "" {
		if err := validHostname(r.Hostname); err != nil {
			return id, err
		}
		id.Hostname = r.Hostname
	}
	if r.Address.IsValid() {
		if !r.Address.Addr().Is4() || r.Address.Addr().IsUnspecified() || r.Address.Bits() < 1 || r.Address.Bits() > 32 {
			return id, fmt.Errorf("address %s: want an IPv4 address with a prefix length, like 10.0.0.2/24", r.Address)
		}
		id.Address = r.Address
	}
	if r.Gateway.IsValid() {
		if !r.Gateway.Is4() {
			return id, fmt.Errorf("gateway %s: want an IPv4 address", r.Gateway)
		}
		if !id.Address.IsValid() {
			return id, errors.New("gateway without address: send the address too")
		}
		id.Gateway = r.Gateway
	}
	if r.MAC != "" {
		mac, err := net.ParseMAC(r.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return id, fmt.Errorf("mac %q: want a unicast Ethernet address like 02:00:00:00:00:01", r.MAC)
		}
		id.MAC = mac
	}
	for _, d := range r.DNS {
		if !d.IsValid() {
			return id, errors.New("dns: empty address")
		}
	}
	id.DNS = r.DNS
	switch r.Proxy {
	case "":
	case "off":
		id.Proxy = &netip.AddrPort{}
	default:
		p, err := netip.ParseAddrPort(r.Proxy)
		if err != nil || !p.Addr().Is4() || p.Port() == 0 {
			return id, fmt.Errorf("proxy %q: want IPv4:PORT, or off", r.Proxy)
		}
		id.Proxy = &p
	}
	if len(r.HostKey) > 0 {
		signer, err := ssh.ParsePrivateKey(r.HostKey)
		if err != nil {
			return id, fmt.Errorf("host key: %w", err)
		}
		id.HostKey = signer
	}
	if len(bytes.TrimSpace(r.AuthorizedKeys)) > 0 {
		keys, err := parseAuthorizedKeys(r.AuthorizedKeys)
		if err != nil {
			return id, err
		}
		id.AuthorizedKeys = keys
	}
	if r.MachineID != "" {
		if err := validMachineID(r.MachineID); err != nil {
			return id, err
		}
		id.MachineID = r.MachineID
	}
	if len(r.Seed) > 0 {
		if len(r.Seed) < minSeed || len(r.Seed) > maxSeed {
			return id, fmt.Errorf("seed: %d bytes, want %d to %d", len(r.Seed), minSeed, maxSeed)
		}
		id.Seed = r.Seed
	}
	if r.TimeUnixNano < 0 {
		return id, fmt.Errorf("time_unix_nano %d: before 1970", r.TimeUnixNano)
	}
	if r.TimeUnixNano > 0 {
		id.Time = time.Unix(0, r.TimeUnixNano)
	}
	return id, nil
}

// validHostname accepts what sethostname(2) takes (at most 64 bytes) and
// resolvers understand: letters, digits, '-' and '.', no empty label.
func validHostname(h string) error {
	if len(h) > 64 {
		return fmt.Errorf("hostname %q: longer than 64 bytes", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname %q: empty label, or one that starts or ends with '-'", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("hostname %q: only letters, digits, '-' and '.' are allowed", h)
			}
		}
	}
	return nil
}

// validMachineID checks machine-id(5)'s format: 32 lowercase hex digits,
// not all zero.
func validMachineID(m string) error {
	if len(m) != 32 || strings.Trim(m, "0123456789abcdef") != "" || strings.Trim(m, "0") == "" {
		return fmt.Errorf("machine id %q: want 32 lowercase hex digits, not all zero", m)
	}
	return nil
}

func parseAuthorizedKeys(b []byte) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for rest := b; len(bytes.TrimSpace(rest)) > 0; {
		pub, _, _, r, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			return nil, fmt.Errorf("authorized keys: %w", err)
		}
		keys = append(keys, pub)
		rest = r
	}
	return keys, nil
}

// ServeControl answers the requests read from r on w until r ends (nil) or
// fails. apply carries out a validated identity; its error is answered.
// A partial line at the end is dropped: on the control port, the end of
// input is the host hanging up, and the next host starts afresh.
func ServeControl(r io.Reader, w io.Writer, apply func(Identity) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := readLine(br, MaxControlLine)
		if errors.Is(err, errLineTooLong) {
			if err := writeAnswer(w, controlAnswer{Error: fmt.Sprintf("request longer than %d bytes", MaxControlLine)}); err != nil {
				return err
			}
			continue
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := writeAnswer(w, handleControl(line, apply)); err != nil {
			return err
		}
	}
}

func handleControl(line []byte, apply func(Identity) error) controlAnswer {
	var req controlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		// Answer under the request's id if that much can be read.
		var idOnly struct {
			ID uint64 `json:"id"`
		}
		json.Unmarshal(line, &idOnly)
		return controlAnswer{ID: idOnly.ID, Error: fmt.Sprintf("bad request: %v", err)}
	}
	ans := controlAnswer{ID: req.ID}
	switch req.Op {
	case "ping":
	case "identity":
		id, err := req.IdentityRequest.Parse()
		switch {
		case err != nil:
		case apply == nil:
			err = errors.New("identity: not supported here")
		default:
			err = apply(id)
		}
		if err != nil {
			ans.Error = err.Error()
			return ans
		}
	default:
		ans.Error = fmt.Sprintf("unknown op %q (want ping or identity)", req.Op)
		return ans
	}
	ans.OK = true
	return ans
}

var errLineTooLong = errors.New("line too long")

// readLine reads one line without its newline. A longer line than max is
// consumed up to its newline and reported as errLineTooLong, so the
// stream stays in step.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > max+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil:
			return nil, err // a partial line at the end is dropped
		case tooLong:
			return nil, errLineTooLong
		}
		return line[:len(line)-1], nil
	}
}

func writeAnswer(w io.Writer, a controlAnswer) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
