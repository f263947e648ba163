"""vm.run against a real guest: results, exits, output, timeouts, env."""

from __future__ import annotations

import time

import pytest

import smolvm
from smolvm import SmolVM


def test_result_fields(vm: SmolVM) -> None:
    r = vm.run("echo '  out  '; echo err >&2")
    assert r.exit_code == 0 and r.ok
    assert r.stdout == "  out  \n"
    assert r.output == "out"
    assert r.stderr == "err\n"


def test_nonzero_exit_is_a_result(vm: SmolVM) -> None:
    r = vm.run("echo partial; echo bad >&2; exit 7")
    assert r.exit_code == 7 and not r.ok
    assert r.output == "partial" and r.stderr == "bad\n"
    assert vm.run("false").exit_code == 1


def test_binary_output_byte_for_byte(vm: SmolVM) -> None:
    r = vm.run(r"printf 'a\377\376b'")
    assert r.stdout_bytes == b"a\xff\xfeb"
    assert r.stdout == "a\ufffd\ufffdb"


def test_stdin_and_per_command_env(vm: SmolVM) -> None:
    assert vm.run("cat", stdin="fed in").stdout == "fed in"
    assert vm.run("wc -c", stdin=b"\x00\x01\x02").output == "3"
    assert vm.run("echo $ONLY_HERE", env={"ONLY_HERE": "yes"}).output == "yes"
    assert vm.run("echo ${ONLY_HERE:-unset}").output == "unset"


def test_timeout_kills_the_command(vm: SmolVM) -> None:
    t0 = time.monotonic()
    with pytest.raises(smolvm.OperationTimeoutError) as e:
        vm.run("sleep 30; echo late", timeout=1)
    took = time.monotonic() - t0
    assert took < 10, took
    err = e.value
    assert isinstance(err, smolvm.SmolVMError)
    assert err.message and err.operation == "run" and err.timeout_seconds == 1.0
    assert err.code == "timeout" and err.status == 504
    # The command is killed in the guest (the kill lands just after the
    # answer, so allow it a moment); the VM is still usable.
    deadline = time.monotonic() + 5
    while vm.run("pgrep -x sleep || echo none").output != "none":
        assert time.monotonic() < deadline, "the timed-out command is still running in the guest"
        time.sleep(0.1)


def test_shell_modes(vm: SmolVM) -> None:
    assert vm.run("echo $((1+2))", shell="login").output == "3"
    assert vm.run("echo $((1+2))", shell="raw").output == "3"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"command": ""}, "command"),
        ({"command": 5}, "command"),
        ({"command": "true", "timeout": 0}, "timeout"),
        ({"command": "true", "timeout": -1}, "timeout"),
        ({"command": "true", "timeout": "5"}, "timeout"),
        ({"command": "true", "shell": "bash"}, "shell"),
        ({"command": "true", "env": {"1BAD": "x"}}, "env"),
        ({"command": "true", "stdin": 5}, "stdin"),
    ],
)
def test_bad_arguments(vm: SmolVM, kwargs: dict, field: str) -> None:
    with pytest.raises(smolvm.ValidationError) as e:
        vm.run(**kwargs)
    assert isinstance(e.value, ValueError)
    assert e.value.details.get("field") == field
    assert e.value.message


def test_env_vars_methods(vm: SmolVM) -> None:
    assert vm.set_env_vars({}) == []
    assert vm.set_env_vars({"FOO": "bar", "BAZ": "qux"}) == ["BAZ", "FOO"]
    assert vm.set_env_vars({"FOO": "updated", "NEW": "value"}) == ["BAZ", "FOO", "NEW"]
    assert vm.list_env_vars() == {"FOO": "updated", "BAZ": "qux", "NEW": "value"}
    assert vm.run("echo $FOO-$BAZ").output == "updated-qux"
    assert vm.unset_env_vars(["BAZ", "MISSING"]) == {"BAZ": "qux"}
    assert vm.set_env_vars({"ONLY": "this"}, merge=False) == ["ONLY"]
    assert vm.list_env_vars() == {"ONLY": "this"}
    assert vm.run("echo ${FOO:-gone}:$ONLY").output == "gone:this"
    assert vm.unset_env_vars([]) == {}
    assert vm.unset_env_vars(["ONLY"]) == {"ONLY": "this"}
    assert vm.list_env_vars() == {}
    with pytest.raises(smolvm.ValidationError):
        vm.set_env_vars({"BAD-NAME": "x"})
    with pytest.raises(smolvm.ValidationError):
        vm.unset_env_vars(["has space"])
    assert vm.list_env_vars() == {}


def test_run_round_trip_is_fast(vm: SmolVM) -> None:
    # Kept-alive connection: many commands, no reconnect per call.
    t0 = time.monotonic()
    for _ in range(10):
        assert vm.run("true").ok
    assert time.monotonic() - t0 < 10


def test_concurrent_runs_share_the_pool(vm: SmolVM) -> None:
    import threading

    results: dict = {}

    def worker(i: int) -> None:
        results[i] = [vm.run(f"echo {i}-{j}").output for j in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [f"{i}-{j}" for j in range(3)] for i in range(4)}


def test_streamed_output_arrives_as_it_comes(vm: SmolVM) -> None:
    import time as _t

    seen = []
    t0 = _t.monotonic()

    def on_output(stream: str, data: bytes) -> None:
        seen.append((stream, data, _t.monotonic() - t0))

    r = vm.run("echo first; sleep 1.5; echo oops >&2; printf '\\377'; exit 4", on_output=on_output)
    assert r.exit_code == 4
    assert r.stdout_bytes == b"first\n\xff" and r.stderr == "oops\n"
    first = [t for s, d, t in seen if d == b"first\n"]
    assert first and first[0] < 1.2, seen  # before the command ended
    assert {s for s, _, _ in seen} == {"stdout", "stderr"}
    with pytest.raises(smolvm.OperationTimeoutError):
        vm.run("sleep 20", timeout=1, on_output=lambda s, d: None)
