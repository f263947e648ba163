"""Fixtures: a real smolvm server built from this checkout, and real VMs.

Every test session gets its own SMOLVM_HOME under pytest's temporary
directory; the client starts the server there itself (the autostart path
users get). At the end every VM and snapshot the session made is deleted
and the server is stopped, and the session fails if a VM process is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
PYROOT = HERE.parent
REPO = PYROOT.parent
sys.path.insert(0, str(PYROOT))

import smolvm  # noqa: E402


def smolvm_bin() -> str:
    b = os.environ.get("SMOLVM_BIN") or str(REPO / "bin" / "smolvm")
    if not os.access(b, os.X_OK):
        pytest.skip(f"no smolvm binary at {b}: run ./scripts/build.sh or set SMOLVM_BIN")
    return b


def wait_gone(pid: int, within: float) -> bool:
    """Whether process pid ended (or is a zombie) within the time given."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


def vm_processes(home: Path) -> list:
    """PIDs of processes whose command line names this home (QEMU, servers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if str(home).encode() in cmd and b"qemu" in cmd:
            out.append(int(d))
    return out


def kill_server(client: smolvm.Client) -> None:
    health = client.ping()
    if health:
        pid = int(health["pid"])
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A per-session SMOLVM_HOME, with the environment the client reads set."""
    binary = smolvm_bin()
    h = tmp_path_factory.mktemp("smolvm-home")
    old = {k: os.environ.get(k) for k in ("SMOLVM_HOME", "SMOLVM_BIN", "SMOLVM_HOST", "SMOLVM_TOKEN", "SMOLVM_ALPINE_SOURCE")}
    os.environ["SMOLVM_HOME"] = str(h)
    os.environ["SMOLVM_BIN"] = binary
    os.environ.pop("SMOLVM_HOST", None)
    os.environ.pop("SMOLVM_TOKEN", None)
    # As scripts/env.sh does: never let a test reach for Alpine's CDN.
    alpine = REPO.parent / "shared" / "alpine"
    if not os.environ.get("SMOLVM_ALPINE_SOURCE") and alpine.is_dir():
        os.environ["SMOLVM_ALPINE_SOURCE"] = str(alpine)
    yield h
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def client(home: Path) -> Iterator[smolvm.Client]:
    """The session's client; its server is stopped and every VM deleted at the end."""
    c = smolvm.Client()
    yield c
    leftovers = []
    try:
        for info in smolvm.SmolVM.list(client=c):
            leftovers.append(info.vm_id)
            try:
                c.call("DELETE", f"/vms/{info.vm_id}")
            except smolvm.SmolVMError:
                pass
        for s in smolvm.list_snapshots(client=c):
            if not s.raw.get("auto"):
                try:
                    smolvm.remove_snapshot(s.name, client=c)
                except smolvm.SmolVMError:
                    pass
    finally:
        c.close()
        kill_server(c)
    stray = vm_processes(home)
    for pid in stray:
        os.kill(pid, signal.SIGKILL)
    assert not stray, f"VM processes left behind: {stray}"
    assert not leftovers, f"tests left VMs behind: {leftovers}"


@pytest.fixture(scope="module")
def vm(client: smolvm.Client) -> Iterator[smolvm.SmolVM]:
    """One running VM shared by the tests of a module that do not change its lifecycle."""
    v = smolvm.SmolVM(client=client)
    try:
        v.start()
        yield v
    finally:
        try:
            v.delete()
        except smolvm.VMNotFoundError:
            pass


def run_python(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter that imports this checkout's smolvm."""
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = str(PYROOT)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=timeout)
