"""`pip install ./python` works with no package index, and the installed package works."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import smolvm

PYROOT = Path(__file__).resolve().parents[1]


def test_pip_install_offline_into_venv(tmp_path: Path, client: smolvm.Client, vm: smolvm.SmolVM) -> None:
    venv = tmp_path / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"python3 -m venv does not work here (Debian: apt install python3-venv): {r.stderr[-300:]}")
    py = venv / "bin" / "python"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           # Any index access would fail loudly instead of hanging.
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PYTHONPATH": ""}
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-index", str(PYROOT)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    code = (
        "import smolvm, smolvm.build, smolvm.exceptions, sys\n"
        "assert smolvm.__file__.startswith(sys.prefix), smolvm.__file__\n"
        f"v = smolvm.SmolVM.from_id({vm.vm_id!r})\n"
        "print(v.run('echo installed').output)\n"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "installed"
    site = subprocess.run([str(py), "-c", "import smolvm, os; print(os.path.dirname(smolvm.__file__))"],
                          capture_output=True, text=True, env=env, cwd=tmp_path).stdout.strip()
    assert (Path(site) / "py.typed").exists()


def test_wheel_contents(tmp_path: Path) -> None:
    sys.path.insert(0, str(PYROOT / "_build"))
    try:
        import smolvm_build
    finally:
        sys.path.pop(0)
    name = smolvm_build.build_wheel(str(tmp_path))
    with zipfile.ZipFile(tmp_path / name) as z:
        names = set(z.namelist())
        record = z.read("smolvm-0.1.0.dist-info/RECORD").decode()
        meta = z.read("smolvm-0.1.0.dist-info/METADATA").decode()
    assert {"smolvm/__init__.py", "smolvm/facade.py", "smolvm/py.typed"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert all(n in record for n in names)
    assert "Requires-Python: >=3.9" in meta
    sdist = smolvm_build.build_sdist(str(tmp_path))
    assert sdist == "smolvm-0.1.0.tar.gz"


def python39() -> str:
    """A Python 3.9 interpreter, if this machine has one (Debian 12 itself has 3.11)."""
    import glob
    import shutil

    for cand in [shutil.which("python3.9") or ""] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))):
        if cand and subprocess.run([cand, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                                   capture_output=True).returncode == 0:
            return cand
    pytest.skip("no Python 3.9 interpreter here to check the >=3.9 promise with")


def test_imports_and_works_on_python39(vm: smolvm.SmolVM) -> None:
    py = python39()
    code = (
        "import smolvm\n"
        "from smolvm import SmolVM, VMConfig\n"
        "assert VMConfig(mem_size_mib=256).to_api()['memory_mib'] == 256\n"
        f"print(SmolVM.from_id({vm.vm_id!r}).run('echo py39').output)\n"
    )
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(PYROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "py39"
