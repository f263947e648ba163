"""Finding, starting and leaving the server: autostart, races, idle exit, hosts, tokens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import smolvm
from conftest import smolvm_bin, wait_gone


def test_autostart_concurrent_clients_start_one_server(tmp_path: Path) -> None:
    # Four fresh interpreters find no server at once; exactly one is started
    # and all four use it; it exits once they are gone (idle timeout 1s).
    home = tmp_path / "home"
    code = (
        "import smolvm\n"
        "c = smolvm.Client(idle_timeout='1s')\n"
        "print(c.call('GET', '/health')['pid'])\n"
    )
    env = {"SMOLVM_HOME": str(home), "SMOLVM_BIN": smolvm_bin()}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parent.parent)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    pids = {int(out.strip()) for out, _ in outs}
    assert len(pids) == 1, pids
    pid = pids.pop()
    assert oct(os.stat(home / "smolvm.sock").st_mode & 0o777) == "0o600"
    assert oct(os.stat(home / "serve.log").st_mode & 0o777) == "0o600"
    assert wait_gone(pid, 15), "the started server outlived its clients"
    assert smolvm.Client(home=home, autostart=False).ping() is None


def test_server_lives_while_a_client_holds_a_connection(tmp_path: Path) -> None:
    home = tmp_path / "home"
    c = smolvm.Client(home=home, smolvm_bin=smolvm_bin(), idle_timeout="1s")
    pid = c.call("GET", "/health")["pid"]
    assert c.started_server is not None and c.started_server.pid == pid
    time.sleep(2.5)  # idle, but our kept-alive connection is open
    assert c.call("GET", "/health")["pid"] == pid
    c.close()  # no connection left: it exits after the idle timeout
    assert wait_gone(pid, 10)
    # The next call starts a new one.
    assert c.call("GET", "/health")["pid"] != pid
    c.close()
    assert wait_gone(c.started_server.pid, 10)


def test_no_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SMOLVM_BIN", raising=False)
    c = smolvm.Client(home=tmp_path / "home")
    with pytest.raises(smolvm.ServerUnavailableError, match="SMOLVM_BIN"):
        c.call("GET", "/health")


def test_failing_server_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "smolvm"
    fake.write_text("#!/bin/sh\necho 'cannot serve: broken on purpose' >&2\nexit 3\n")
    fake.chmod(0o755)
    c = smolvm.Client(home=tmp_path / "home", smolvm_bin=str(fake))
    t0 = time.monotonic()
    with pytest.raises(smolvm.ServerUnavailableError, match="broken on purpose") as e:
        c.call("GET", "/health")
    assert "status 3" in e.value.message
    assert time.monotonic() - t0 < 10


def test_explicit_host_does_not_autostart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLVM_HOST", f"unix://{tmp_path}/none.sock")
    c = smolvm.Client()
    assert not c.autostart
    with pytest.raises(smolvm.ServerUnavailableError, match="none.sock"):
        c.call("GET", "/health")
    assert not (tmp_path / "none.sock").exists()


@pytest.mark.parametrize("host", ["http//x", "ftp://h:1", "unix://", "tcp://127.0.0.1"])
def test_bad_host(host: str) -> None:
    with pytest.raises(smolvm.ValidationError):
        smolvm.Client(host)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_with_token(tmp_path: Path, home: Path, client: smolvm.Client, vm: smolvm.SmolVM) -> None:
    # A second server on the same home, on TCP: the token is needed.
    port = free_port()
    token = "py-test-token-0123456789"
    proc = subprocess.Popen([smolvm_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--token", token],
                            env={**os.environ, "SMOLVM_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        good = smolvm.Client(f"tcp://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 10
        while good.ping() is None:
            assert time.monotonic() < deadline, "TCP server did not come up"
            time.sleep(0.05)
        v = smolvm.SmolVM.from_id(vm.vm_id, client=good)
        assert v.run("echo over-tcp").output == "over-tcp"
        bad = smolvm.Client(f"tcp://127.0.0.1:{port}", "wrong")
        with pytest.raises(smolvm.AuthenticationError) as e:
            smolvm.SmolVM.from_id(vm.vm_id, client=bad)
        assert e.value.status == 401
        with pytest.raises(smolvm.AuthenticationError):
            smolvm.SmolVM(client=bad)  # refused before anything is made
        good.close()
        # The same from the environment, as users set it.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SMOLVM_HOST", f"tcp://127.0.0.1:{port}")
            mp.setenv("SMOLVM_TOKEN", token)
            env_client = smolvm.Client()
            assert not env_client.autostart
            assert smolvm.SmolVM.from_id(vm.vm_id, client=env_client).run("echo env").output == "env"
            env_client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_default_socket_of_another_user_is_refused(tmp_path: Path) -> None:
    # Someone else's socket where ours should be: they would see every
    # request, so the client refuses it (and starts nothing).
    if os.getuid() != 0:
        pytest.skip("needs root to make a socket owned by another user")
    home = tmp_path / "home"
    home.mkdir()
    path = home / "smolvm.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    os.chown(path, 65534, 65534)
    try:
        c = smolvm.Client(home=home, smolvm_bin=smolvm_bin())
        with pytest.raises(smolvm.ServerUnavailableError, match="uid 65534"):
            c.call("GET", "/health")
        assert c.started_server is None
    finally:
        srv.close()


def test_client_survives_a_server_restart(tmp_path: Path) -> None:
    # The server it talks to goes away (killed, idle exit): the next call
    # finds no socket and starts a new one; kept-alive connections to the
    # old one are dropped, not reused.
    home = tmp_path / "home"
    c = smolvm.Client(home=home, smolvm_bin=smolvm_bin(), idle_timeout="2s")
    pid = c.call("GET", "/health")["pid"]
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 10)
    new = c.call("GET", "/health")["pid"]
    assert new != pid
    c.close()
    assert wait_gone(new, 10)
