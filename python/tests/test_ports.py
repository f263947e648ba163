"""Port forwards to a real guest listener."""

from __future__ import annotations

import socket
import time

import pytest

import smolvm
from smolvm import SmolVM


def read_hello(port: int, within: float = 15.0) -> bytes:
    deadline = time.monotonic() + within
    last: Exception = OSError("never tried")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                data = s.recv(100)
                if data:
                    return data
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"nothing from 127.0.0.1:{port}: {last}")


def test_expose_list_unexpose(vm: SmolVM) -> None:
    vm.run("nohup sh -c 'while true; do echo hello-from-guest | nc -l -p 8080; done' >/dev/null 2>&1 &")
    f = vm.expose(8080)  # host_port 0: a free port is picked
    assert f.guest_port == 8080 and f.host_addr == "127.0.0.1" and f.host_port > 0
    assert f in vm.list_ports()
    assert read_hello(f.host_port).startswith(b"hello-from-guest")
    vm.unexpose(f.host_port)
    assert f not in vm.list_ports()

    port = vm.expose_local(8080)  # the reference's name: returns the host port
    assert read_hello(port).startswith(b"hello-from-guest")
    assert vm.unexpose_local(port, 8080) is vm
    assert vm.list_ports() == []


@pytest.mark.parametrize("args", [(0,), (70000,), (-1,), ("80",), (80, -5), (80, 70000)])
def test_expose_bad_ports(vm: SmolVM, args) -> None:
    with pytest.raises(smolvm.ValidationError):
        vm.expose(*args)
    assert vm.list_ports() == []


def test_expose_bad_address_from_server(vm: SmolVM) -> None:
    with pytest.raises(smolvm.ValidationError) as e:
        vm.expose(8080, 0, host_addr="not-an-ip")
    assert e.value.code == "invalid"
    assert vm.list_ports() == []
