"""Streaming file and tree transfer helpers, with a hostile guest in mind.

Uploads of a tree are a tar written on the fly into a pipe (never whole in
memory). Downloads of a tree are a tar read as it arrives and unpacked
member by member into a fresh directory beside the destination, which is
moved into place only once complete. The guest chooses every name, link
and mode in that tar, so nothing it sends may make us write outside the
copy: names that climb out or are absolute, writing through links (the
guest's symlinks are kept as symlinks, never followed), hard links out of
the copy, devices and FIFOs are refused or skipped, and modes
lose setuid, setgid, sticky and group/other write.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from smolvm.exceptions import SmolVMError, ValidationError

logger = logging.getLogger("smolvm")

_CHUNK = 1 << 16
_MODE_MASK = 0o755  # drops setuid/setgid/sticky and group/other write


def check_guest_path(path: Any) -> str:
    """A guest path must be an absolute path without NUL bytes."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValidationError(f"guest path {path!r} must be an absolute path such as /root/file",
                              {"field": "remote_path"})
    return path


class TarStream:
    """A readable tar of directory ``src``, produced by a thread into a pipe."""

    def __init__(self, src: Path) -> None:
        self._src = src
        r, w = os.pipe()
        self._r = os.fdopen(r, "rb")
        self._w = os.fdopen(w, "wb")
        self.error: Optional[BaseException] = None
        self._t = threading.Thread(target=self._write, name="smolvm-tar", daemon=True)
        self._t.start()

    def _write(self) -> None:
        try:
            with tarfile.open(fileobj=self._w, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                self._add_dir(tf, str(self._src), "")
        except BaseException as e:  # reported by __exit__
            self.error = e
        finally:
            try:
                self._w.close()
            except OSError:
                pass

    def _add_dir(self, tf: tarfile.TarFile, path: str, rel: str) -> None:
        for name in sorted(os.listdir(path)):
            full, arc = os.path.join(path, name), (rel + "/" + name if rel else name)
            st = os.lstat(full)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                logger.warning("skipping %s: not a file, directory or symlink", full)
                continue
            # Files linked more than once go whole each time: the server
            # takes no hard links (and a symlink is sent as one, never followed).
            tf.inodes.clear()
            tf.add(full, arcname=arc, recursive=False)
            if stat.S_ISDIR(st.st_mode):
                self._add_dir(tf, full, arc)

    def read(self, n: int = -1) -> bytes:
        return self._r.read(n)

    def __enter__(self) -> "TarStream":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self._r.close()  # a writer still blocked on the pipe gets EPIPE and ends
        self._t.join()
        if self.error is not None and et is None:
            raise SmolVMError(f"reading {self._src} for upload: {self.error}") from self.error


def write_atomic(src: Any, dest: Path, mode_header: Optional[str]) -> None:
    """Stream ``src`` into ``dest`` through a temporary file renamed over it at the end."""
    mode = 0o644
    if mode_header:
        try:
            mode = int(mode_header, 8)
        except ValueError:
            pass
    parent = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
            os.fchmod(f.fileno(), mode & _MODE_MASK)
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _clean_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or any(p == ".." for p in parts):
        raise SmolVMError(f"the guest sent an unsafe path in the tar: {name!r}", {"member": name})
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def extract_tar(src: Any, dest: Path) -> None:
    """Unpack the tar stream ``src`` as directory ``dest`` (merging into an existing one)."""
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.exists() and not dest.is_dir():
        raise ValidationError(f"{dest} exists and is not a directory", {"field": "local_path"})
    tmp = tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=parent)
    try:
        _extract_into(src, tmp)
        if not os.path.lexists(dest):
            os.rename(tmp, dest)
            return
        _merge(tmp, str(dest))
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_into(src: Any, root: str) -> None:
    real_root = os.path.realpath(root)
    with tarfile.open(fileobj=src, mode="r|") as tf:
        for m in tf:
            name = _clean_name(m.name)
            if not name:
                continue
            target = os.path.join(root, name)
            # No write may go through a link: the parent, resolved, must be ours.
            if not _inside(real_root, os.path.realpath(os.path.dirname(target))):
                raise SmolVMError(f"the guest's tar writes through a link: {m.name!r}", {"member": m.name})
            if m.isdir():
                if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
                    os.unlink(target)
                os.makedirs(target, exist_ok=True)
                os.chmod(target, (m.mode & _MODE_MASK) | 0o700)
                continue
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.unlink(target)
            if m.issym():
                # Kept verbatim, as the Go SDK's Download does: a link may
                # point anywhere, since nothing is ever written through one
                # (the parent check above, and O_NOFOLLOW below).
                os.symlink(m.linkname, target)
            elif m.islnk():
                source = os.path.join(root, _clean_name(m.linkname))
                real = os.path.realpath(source)
                if not _inside(real_root, real) or not os.path.isfile(real):
                    raise SmolVMError(f"the guest's tar has a hard link pointing out of the copy: {m.name!r}",
                                      {"member": m.name})
                shutil.copyfile(real, target)
                os.chmod(target, stat.S_IMODE(os.stat(real).st_mode))
            elif m.isreg():
                f = tf.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    if f is not None:
                        while True:
                            chunk = f.read(_CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                    os.fchmod(out.fileno(), m.mode & _MODE_MASK)
            else:
                logger.warning("skipping %s from the guest: not a file, directory or symlink", m.name)


def _merge(src_root: str, dest_root: str) -> None:
    """Move the tree at src_root into dest_root, replacing what is there."""
    real_dest = os.path.realpath(dest_root)
    for dirpath, dirnames, filenames in os.walk(src_root):
        rel = os.path.relpath(dirpath, src_root)
        out_dir = dest_root if rel == "." else os.path.join(dest_root, rel)
        if not _inside(real_dest, os.path.realpath(out_dir)):
            raise SmolVMError(f"{out_dir} leads out of {dest_root} through a link")
        for d in list(dirnames):
            s, t = os.path.join(dirpath, d), os.path.join(out_dir, d)
            if os.path.islink(s):
                dirnames.remove(d)
                filenames.append(d)
                continue
            if os.path.lexists(t) and (os.path.islink(t) or not os.path.isdir(t)):
                os.unlink(t)
            os.makedirs(t, exist_ok=True)
        for f in filenames:
            s, t = os.path.join(dirpath, f), os.path.join(out_dir, f)
            if os.path.isdir(t) and not os.path.islink(t):
                shutil.rmtree(t)
            os.replace(s, t)
