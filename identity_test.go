package smolvm_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/internal/guest"
	"github.com/smolvm/smolvm/internal/hypervisor"
	"github.com/smolvm/smolvm/internal/hypervisor/qemu"
	"github.com/smolvm/smolvm/internal/network"
	"golang.org/x/crypto/ssh"
)

// TestIdentity gives a running VM a new identity over its control port
// (what a clone restored from a snapshot gets) and checks each part from
// inside: hostname, machine id, clock, MAC, and the SSH keys, after which
// only the new client key gets in and only the new host key is presented.
func TestIdentity(t *testing.T) {
	for _, mode := range []string{smolvm.NetworkTAP, smolvm.NetworkUser} {
		t.Run(mode, func(t *testing.T) {
			if mode == smolvm.NetworkTAP && os.Geteuid() != 0 {
				t.Skip("TAP networking needs root")
			}
			testIdentity(t, mode)
		})
	}
}

func testIdentity(t *testing.T, mode string) {
	ctx := testContext(t, 4*time.Minute)
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(mode))
	startVM(t, ctx, vm)
	info := vm.Info()
	sock := filepath.Join(vm.DataDir(), "agent.sock")
	addr, err := netip.ParseAddr(info.Network.GuestIP)
	if err != nil {
		t.Fatalf("guest IP %q: %v", info.Network.GuestIP, err)
	}
	prefix := netip.PrefixFrom(addr, info.Network.Prefix)
	var gw netip.Addr
	if info.Network.Gateway != "" {
		gw = netip.MustParseAddr(info.Network.Gateway)
	}
	oldHostPEM, err := os.ReadFile(filepath.Join(vm.DataDir(), "ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	oldAuthorized, err := os.ReadFile(filepath.Join(vm.DataDir(), "id_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}

	ctrl, err := guest.DialControl(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	start := time.Now()
	if err := ctrl.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	t.Logf("first ping (agent woken by SIGIO): %v", time.Since(start))

	// 1: everything but the keys changes; the VM handle still gets in.
	seed, _ := guest.NewSeed()
	mid, _ := guest.NewMachineID()
	future := time.Now().Add(1000 * time.Hour)
	const mac = "02:5a:11:22:33:44"
	first := guest.Identity{
		Hostname: "clone-one", Address: prefix, Gateway: gw, MAC: mac, MachineID: mid, Seed: seed, Time: future,
		HostKeyPEM: oldHostPEM, AuthorizedKeys: oldAuthorized,
	}
	start = time.Now()
	if err := ctrl.Identity(ctx, first); err != nil {
		t.Fatalf("identity: %v", err)
	}
	t.Logf("Identity (clock, RNG, hostname, machine-id, MAC+address+route+ARP, same keys): %v", time.Since(start))
	out := run(t, ctx, vm, "hostname; cat /etc/machine-id; date +%s; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | wc -l").Stdout
	got := strings.Fields(out)
	if len(got) != 5 {
		t.Fatalf("guest says %q", out)
	}
	if got[0] != "clone-one" || got[1] != mid || got[3] != mac || got[4] != "1" {
		t.Errorf("guest has hostname %s, machine id %s, MAC %s, %s IPv4 addresses; want clone-one, %s, %s, 1", got[0], got[1], got[3], got[4], mid, mac)
	}
	if secs, _ := strconv.ParseInt(got[2], 10, 64); secs < future.Unix()-60 || secs > future.Unix()+600 {
		t.Errorf("guest clock %s, want about %d", got[2], future.Unix())
	}

	// Idle: with the host gone, the agent waits for SIGIO, not in a loop.
	ctrl.Close()
	cpu := run(t, ctx, vm, "cut -d' ' -f14,15 /proc/1/stat; sleep 3; cut -d' ' -f14,15 /proc/1/stat").Stdout
	if ticks := cpuTicks(t, cpu); ticks > 30 {
		t.Errorf("PID 1 used %d ticks in 3 s with the control port idle: it spins", ticks)
	} else {
		t.Logf("PID 1 idle for 3 s: %d ticks", ticks)
	}
	start = time.Now()
	if ctrl, err = guest.DialControl(ctx, sock); err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	if err := ctrl.Ping(ctx); err != nil {
		t.Fatalf("ping after reconnecting: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("reconnect and ping took %v: the agent missed SIGIO and waited for its fallback", d)
	} else {
		t.Logf("reconnect + ping: %v", d)
	}

	// 2: new keys.
	newHost, newHostPEM, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	newClient, _, err := guest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	seed2, _ := guest.NewSeed()
	second := first
	second.Hostname, second.Seed, second.Time = "clone-two", seed2, time.Now()
	second.HostKeyPEM, second.AuthorizedKeys = newHostPEM, ssh.MarshalAuthorizedKey(newClient.PublicKey())
	start = time.Now()
	if err := ctrl.Identity(ctx, second); err != nil {
		t.Fatalf("identity with new keys: %v", err)
	}
	t.Logf("Identity with new keys: %v", time.Since(start))

	oldHost, err := ssh.ParsePrivateKey(oldHostPEM)
	if err != nil {
		t.Fatal(err)
	}
	oldClient := clientKey(t, vm)
	var opts []guest.DialOption
	if info.Network.TAP != "" {
		opts = append(opts, guest.Via(info.Network.TAP))
	}
	dial := func(host, client ssh.Signer) (*guest.Client, error) {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return guest.Dial(dctx, info.Network.SSHAddr, host.PublicKey(), client, opts...)
	}
	c, err := dial(newHost, newClient)
	if err != nil {
		t.Fatalf("dial with the new keys: %v", err)
	}
	var stdout bytes.Buffer
	code, err := c.Exec(ctx, guest.ExecRequest{Command: "hostname; date +%s", Stdout: &stdout})
	c.Close()
	if err != nil || code != 0 {
		t.Fatalf("exec with the new keys: %d, %v", code, err)
	}
	if f := strings.Fields(stdout.String()); len(f) != 2 || f[0] != "clone-two" {
		t.Errorf("guest says %q", stdout.String())
	} else if secs, _ := strconv.ParseInt(f[1], 10, 64); secs < time.Now().Unix()-60 || secs > time.Now().Unix()+60 {
		t.Errorf("guest clock %s, want about now (%d)", f[1], time.Now().Unix())
	}
	if c, err := dial(newHost, oldClient); !errors.Is(err, guest.ErrAuthFailed) {
		t.Errorf("dial with the old client key: %v, want ErrAuthFailed", err)
		if c != nil {
			c.Close()
		}
	}
	if c, err := dial(oldHost, newClient); !errors.Is(err, guest.ErrHostKeyMismatch) {
		t.Errorf("dial pinning the old host key: %v, want ErrHostKeyMismatch", err)
		if c != nil {
			c.Close()
		}
	}

	// A refused request changes nothing and leaves the port usable.
	var refused *guest.ControlError
	if err := ctrl.Identity(ctx, guest.Identity{Hostname: "-bad-"}); !errors.As(err, &refused) {
		t.Errorf("bad hostname: %v, want the guest's refusal", err)
	}
	if err := ctrl.Ping(ctx); err != nil {
		t.Errorf("ping after a refusal: %v", err)
	}
}

// cpuTicks is the growth of utime+stime between two "utime stime" lines.
func cpuTicks(t *testing.T, out string) int64 {
	t.Helper()
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("/proc/1/stat fields: %q", out)
	}
	n := make([]int64, 4)
	for i, s := range f {
		n[i], _ = strconv.ParseInt(s, 10, 64)
	}
	return n[2] + n[3] - n[0] - n[1]
}

// TestIdentityRestoredClone restores two clones from one snapshot of a
// VM (through the QEMU backend directly, as smolvm's clone will) and
// makes each a machine of its own over its control port: the agent,
// parked since the snapshot, wakes at the host's connection; each clone
// takes its own name, machine id, MAC and keys; and their random
// generators part (without the reseed, two clones read the same bytes
// from /dev/urandom most of the time).
func TestIdentityRestoredClone(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	q, err := qemu.New()
	if err != nil {
		t.Skip(err)
	}
	snap, ok := any(q).(hypervisor.Snapshotter)
	if !ok {
		t.Skip("this QEMU backend cannot snapshot")
	}
	// Cold: the raw capture below copies the VM's disk as a raw image.
	vm := newVM(t, ctx, smolvm.VMConfig{}, smolvm.WithNetwork(smolvm.NetworkUser), smolvm.WithColdBoot())
	startVM(t, ctx, vm)
	run(t, ctx, vm, "true")
	info := vm.Info()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var cmdline string
	if args := strings.Split(string(raw), "\x00"); slices.Index(args, "-append") >= 0 {
		cmdline = args[slices.Index(args, "-append")+1]
	}
	started, err := hypervisor.StartTime(info.PID)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	files := hypervisor.SnapshotFiles{State: filepath.Join(dir, "state"), Memory: filepath.Join(dir, "memory"), MemoryID: "identity-test"}
	began := time.Now()
	files, err = snap.Snapshot(ctx, hypervisor.Process{PID: info.PID, Start: started},
		filepath.Join(vm.DataDir(), "qmp.sock"), files)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	// The source stays stopped: its disk holds still while it is copied.
	if out, err := exec.Command("cp", "--sparse=always", info.Disk, base).CombinedOutput(); err != nil {
		t.Fatalf("copy the disk: %v %s", err, out)
	}
	t.Logf("source paused %v for the snapshot", time.Since(began))
	// The clones need only the snapshot; two VMs at a time are enough.
	if err := vm.Stop(ctx, 10*time.Second); err != nil {
		t.Fatalf("stop the source: %v", err)
	}
	oldClient := clientKey(t, vm)

	type clone struct {
		ctrl      *guest.Control
		sshAddr   string
		host      ssh.Signer
		client    ssh.Signer
		id        guest.Identity
		saidAfter string
	}
	clones := make([]*clone, 2)
	for i := range clones {
		cdir := filepath.Join(dir, "clone"+strconv.Itoa(i))
		if err := os.Mkdir(cdir, 0o700); err != nil {
			t.Fatal(err)
		}
		overlay := filepath.Join(cdir, "disk.qcow2")
		if b, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, b)
		}
		port, err := network.FreePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		name := "clone" + strconv.Itoa(i)
		spec := hypervisor.Spec{
			ID: name, Name: hypervisor.Name(name, "identitytest"), VCPUs: info.Config.VCPUs, MemoryMiB: info.Config.MemoryMiB,
			Kernel: info.Kernel, Initrd: filepath.Join(vm.DataDir(), "initrd.cpio"), Cmdline: cmdline,
			Disk: overlay, DiskBase: base, ConsoleLog: filepath.Join(cdir, "console.log"), ProcessLog: filepath.Join(cdir, "qemu.log"),
			ControlSocket: filepath.Join(cdir, "qmp.sock"), AgentSocket: filepath.Join(cdir, "agent.sock"),
			Net:     hypervisor.NetSpec{MAC: network.MAC(vm.ID()), Forwards: []hypervisor.Forward{{HostAddr: "127.0.0.1", HostPort: port, GuestPort: 22}}},
			Restore: &files,
		}
		p, err := q.Start(ctx, spec)
		if err != nil {
			b, _ := os.ReadFile(spec.ProcessLog)
			t.Fatalf("restore: %v\n%s", err, b)
		}
		t.Cleanup(func() {
			if err := hypervisor.Kill(context.Background(), p, spec.Name); err != nil {
				t.Errorf("kill %s: %v", name, err)
			}
		})
		resumed := time.Now()
		ctrl, err := guest.DialControl(ctx, spec.AgentSocket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ctrl.Close() })
		if err := ctrl.Ping(ctx); err != nil {
			t.Fatalf("ping %s: %v", name, err)
		}
		if d := time.Since(resumed); d > 10*time.Second {
			t.Errorf("%s's agent answered %v after the restore: it did not wake at the host's connection", name, d)
		} else {
			t.Logf("%s's first answer %v after the restore (cold under emulation)", name, d)
		}
		c := &clone{ctrl: ctrl, sshAddr: "127.0.0.1:" + strconv.Itoa(port)}
		var hostPEM []byte
		if c.host, hostPEM, err = guest.GenerateKey(); err != nil {
			t.Fatal(err)
		}
		if c.client, _, err = guest.GenerateKey(); err != nil {
			t.Fatal(err)
		}
		seed, _ := guest.NewSeed()
		mid, _ := guest.NewMachineID()
		c.id = guest.Identity{
			Hostname: name, Address: netip.MustParsePrefix(info.Network.GuestIP + "/" + strconv.Itoa(info.Network.Prefix)),
			Gateway: netip.MustParseAddr(info.Network.Gateway), MAC: "02:5a:00:00:00:0" + strconv.Itoa(i), MachineID: mid, Seed: seed,
			Time: time.Now(), HostKeyPEM: hostPEM, AuthorizedKeys: ssh.MarshalAuthorizedKey(c.client.PublicKey()),
		}
		clones[i] = c
	}
	for i, c := range clones {
		began := time.Now()
		if err := c.ctrl.Identity(ctx, c.id); err != nil {
			t.Fatalf("identity of clone %d: %v", i, err)
		}
		t.Logf("clone %d's Identity: %v (first call after the restore)", i, time.Since(began))
	}
	// Both clones now do the same thing: a handshake and three reads.
	for i, c := range clones {
		gc, err := guest.Dial(ctx, c.sshAddr, c.host.PublicKey(), c.client)
		if err != nil {
			t.Fatalf("dial clone %d with its new keys: %v", i, err)
		}
		var out bytes.Buffer
		code, err := gc.Exec(ctx, guest.ExecRequest{Stdout: &out,
			Command: "hostname; cat /etc/machine-id /sys/class/net/eth0/address; for i in 1 2 3; do od -An -tx1 -N16 /dev/urandom | tr -d ' '; done"})
		gc.Close()
		if err != nil || code != 0 {
			t.Fatalf("exec on clone %d: %d, %v", i, code, err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 6 {
			t.Fatalf("clone %d says %q", i, out.String())
		}
		if want := []string{c.id.Hostname, c.id.MachineID, c.id.MAC}; !slices.Equal(lines[:3], want) {
			t.Errorf("clone %d has hostname, machine id, MAC %q, want %q", i, lines[:3], want)
		}
		c.saidAfter = strings.Join(lines[3:], " ")
		if gc, err := guest.Dial(ctx, c.sshAddr, c.host.PublicKey(), oldClient); !errors.Is(err, guest.ErrAuthFailed) {
			t.Errorf("the source's client key on clone %d: %v, want ErrAuthFailed", i, err)
			if gc != nil {
				gc.Close()
			}
		}
	}
	a, b := strings.Fields(clones[0].saidAfter), strings.Fields(clones[1].saidAfter)
	for i := range a {
		if a[i] == b[i] {
			t.Errorf("read %d of /dev/urandom is %s in both clones: the generators were not reseeded apart", i, a[i])
		}
	}
}
