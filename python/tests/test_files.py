"""Files and trees, both ways, streamed; and a guest that lies in its tar."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

import smolvm
from smolvm import SmolVM, _files


def test_write_and_read_file(vm: SmolVM) -> None:
    vm.write_file("/tmp/py/new/hello.txt", "hello\n", mode=0o600)
    assert vm.run("cat /tmp/py/new/hello.txt; stat -c %a /tmp/py/new/hello.txt").stdout == "hello\n600\n"
    assert vm.read_file("/tmp/py/new/hello.txt") == b"hello\n"
    vm.write_file("/tmp/py/empty", b"")
    assert vm.read_file("/tmp/py/empty") == b""
    vm.write_file("/tmp/py/stream", io.BytesIO(b"x" * 100000))  # a file object, chunked
    assert vm.run("wc -c < /tmp/py/stream").output == "100000"


def test_upload_and_download_file(vm: SmolVM, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    src.chmod(0o750)
    vm.upload_file(src, "/root/blob.bin")
    r = vm.run("sha256sum /root/blob.bin; stat -c %a /root/blob.bin")
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert r.stdout.split()[-1] == "750"
    out = vm.download_file("/root/blob.bin", tmp_path / "back.bin")
    assert out == tmp_path / "back.bin" and out.read_bytes() == data
    # Into an existing directory: lands under its own name, as cp does.
    d = tmp_path / "into"
    d.mkdir()
    assert vm.download("/root/blob.bin", d) == d / "blob.bin"
    assert (d / "blob.bin").read_bytes() == data
    assert not [p for p in tmp_path.rglob("*.part")]


def test_upload_and_download_tree(vm: SmolVM, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.sh").write_text("#!/bin/sh\necho b\n")
    (src / "sub" / "b.sh").chmod(0o755)
    (src / "sub" / "deeper" / "c").write_bytes(b"\x00\x01")
    os.symlink("a.txt", src / "link")
    os.link(src / "a.txt", src / "hard")  # sent as a second copy
    vm.upload(src, "/srv/proj")
    r = vm.run("cd /srv/proj && find . | sort && readlink link && sh sub/b.sh && cat hard && cat link")
    assert r.ok, r.stderr
    assert r.stdout.split() == [".", "./a.txt", "./hard", "./link", "./sub", "./sub/b.sh", "./sub/deeper",
                                "./sub/deeper/c", "a.txt", "b", "AA"]
    vm.run("mkdir -p /srv/proj/empty && ln -s /etc/passwd /srv/proj/abs")
    back = vm.download("/srv/proj", tmp_path / "back")
    assert (back / "a.txt").read_text() == "A"
    assert (back / "sub" / "deeper" / "c").read_bytes() == b"\x00\x01"
    assert os.readlink(back / "link") == "a.txt"
    assert os.readlink(back / "abs") == "/etc/passwd"  # kept as a link, never followed
    assert (back / "empty").is_dir()
    assert os.stat(back / "sub" / "b.sh").st_mode & 0o777 == 0o755


def test_upload_keeps_relative_symlink_targets(vm: SmolVM, tmp_path: Path) -> None:
    src = tmp_path / "links"
    src.mkdir()
    (src / "a.txt").write_text("A")
    os.symlink("a.txt", src / "link")
    vm.upload(src, "/srv/links")
    assert vm.run("readlink /srv/links/link").output == "a.txt"


def test_download_missing_and_bad_paths(vm: SmolVM, tmp_path: Path) -> None:
    with pytest.raises(smolvm.GuestFileNotFoundError) as e:
        vm.read_file("/no/such/file")
    assert isinstance(e.value, FileNotFoundError) and e.value.code == "not_found"
    with pytest.raises(smolvm.GuestFileNotFoundError):
        vm.download("/no/such/file", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    for bad in ("relative/path", "", None):
        with pytest.raises(smolvm.ValidationError):
            vm.read_file(bad)  # type: ignore[arg-type]
    with pytest.raises(smolvm.ValidationError):
        vm.upload_file(tmp_path, "/tmp/x")  # a directory: use upload()
    with pytest.raises(FileNotFoundError):
        vm.upload_file(tmp_path / "missing", "/tmp/x")
    # As cp: "dir/" names a directory that must exist; nothing is made.
    with pytest.raises(smolvm.ValidationError):
        vm.download("/etc/hostname", str(tmp_path / "nodir") + "/")
    assert not (tmp_path / "nodir").exists()
    # A guest path ending in "/" names no file to write.
    with pytest.raises(smolvm.ValidationError):
        vm.write_file("/tmp/", b"x")


def test_files_of_missing_vm(client: smolvm.Client, vm: SmolVM) -> None:
    gone = SmolVM.from_id(vm.vm_id, client=client)
    gone._vm_id = "no-such-vm"  # a handle whose VM was deleted elsewhere
    with pytest.raises(smolvm.VMNotFoundError):
        gone.read_file("/etc/hostname")


def tar_of(*members) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "members",
    [
        [member("../escape", data=b"x")],
        [member("/etc/evil", data=b"x")],
        [member("a/../../escape", data=b"x")],
        # A hostile guest lists a symlink, then a file "beneath" it.
        [member("ln", tarfile.SYMTYPE, link=".."), member("ln/escape", data=b"x")],
        [member("ln", tarfile.SYMTYPE, link="/tmp"), member("ln/escape", data=b"x")],
        [member("h", tarfile.LNKTYPE, link="../../etc/passwd")],
    ],
)
def test_hostile_tar_writes_nothing_outside(tmp_path: Path, members) -> None:
    # The real server never forwards these (its ReadTree refuses such
    # names), so a crafted stream stands in for a server or guest that lies.
    dest = tmp_path / "box" / "copy"
    dest.parent.mkdir()
    with pytest.raises(smolvm.SmolVMError):
        _files.extract_tar(tar_of(*members), dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["box"]  # nothing left, nothing outside


def test_hostile_tar_modes_and_devices(tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    _files.extract_tar(tar_of(member("suid", data=b"#!", mode=0o6777), member("dev", tarfile.CHRTYPE),
                              member("fifo", tarfile.FIFOTYPE)), dest)
    assert os.stat(dest / "suid").st_mode & 0o7777 == 0o755
    assert sorted(os.listdir(dest)) == ["suid"]
