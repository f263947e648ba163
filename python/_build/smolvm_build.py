"""A PEP 517 build backend for the smolvm client that needs nothing installed.

pip builds in an isolated environment and would download setuptools for a
setuptools backend; on a machine without a package index that fails. This
backend writes the wheel (and sdist) itself with zipfile/tarfile: the
package is pure Python with no build step, so a wheel is the files plus
the metadata PEP 427 and the core metadata spec ask for.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "smolvm"


def _project() -> Dict[str, str]:
    """name, version, description, requires-python from pyproject.toml.

    A small reader for the flat keys we use, since tomllib is 3.11+.
    """
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project]", 1)[1].split("\n[", 1)[0]
    out = {}
    for key in ("name", "version", "description", "requires-python"):
        m = re.search(rf'^{re.escape(key)}\s*=\s*"([^"]*)"', section, re.M)
        if not m:
            raise RuntimeError(f"pyproject.toml: [project] {key} missing")
        out[key] = m.group(1)
    return out


def _files() -> List[Path]:
    pkg = ROOT / PACKAGE
    return sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix in (".py", ".typed"))


def _metadata(p: Dict[str, str]) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p['description']}",
        f"Requires-Python: {p['requires-python']}",
        "License: Apache-2.0",
        "Classifier: Programming Language :: Python :: 3",
        "Classifier: Operating System :: POSIX :: Linux",
        "Classifier: Typing :: Typed",
    ]
    readme = ROOT / "README.md"
    if readme.exists():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text()
    return "\n".join(lines) + "\n"


def _dist_info(p: Dict[str, str]) -> str:
    return f"{p['name']}-{p['version']}.dist-info"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory: str, entries: List[Tuple[str, bytes]], p: Dict[str, str]) -> str:
    di = _dist_info(p)
    entries = list(entries) + [
        (f"{di}/METADATA", _metadata(p).encode()),
        (f"{di}/WHEEL", b"Wheel-Version: 1.0\nGenerator: smolvm_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = "\n".join(_record_line(n, d) for n, d in entries) + f"\n{di}/RECORD,,\n"
    entries.append((f"{di}/RECORD", record.encode()))
    name = f"{p['name']}-{p['version']}-py3-none-any.whl"
    path = os.path.join(wheel_directory, name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in entries:
            info = zipfile.ZipInfo(n, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, d)
    return name


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Optional[dict] = None) -> str:
    p = _project()
    di = Path(metadata_directory) / _dist_info(p)
    di.mkdir(parents=True, exist_ok=True)
    (di / "METADATA").write_text(_metadata(p))
    (di / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: smolvm_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return di.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings: Optional[dict] = None,
                metadata_directory: Optional[str] = None) -> str:
    p = _project()
    entries = [(f.relative_to(ROOT).as_posix(), f.read_bytes()) for f in _files()]
    return _write_wheel(wheel_directory, entries, p)


def build_editable(wheel_directory: str, config_settings: Optional[dict] = None,
                   metadata_directory: Optional[str] = None) -> str:
    """PEP 660: a wheel holding a .pth that puts this checkout on sys.path."""
    p = _project()
    return _write_wheel(wheel_directory, [(f"_{PACKAGE}_editable.pth", (str(ROOT) + "\n").encode())], p)


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    p = _project()
    base = f"{p['name']}-{p['version']}"
    name = f"{base}.tar.gz"
    files = _files() + [ROOT / "pyproject.toml", ROOT / "_build" / "smolvm_build.py"]
    if (ROOT / "README.md").exists():
        files.append(ROOT / "README.md")
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for f in files:
            data = f.read_bytes()
            info = tarfile.TarInfo(f"{base}/{f.relative_to(ROOT).as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1767225600
            tf.addfile(info, io.BytesIO(data))
        pkg_info = _metadata(p).encode()
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size, info.mode, info.mtime = len(pkg_info), 0o644, 1767225600
        tf.addfile(info, io.BytesIO(pkg_info))
    return name
