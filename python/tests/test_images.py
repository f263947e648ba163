"""ImageBuilder against the server's real builder, and booting what it made."""

from __future__ import annotations

import time

import pytest

import smolvm
from smolvm import ImageBuilder, SmolVM, VMConfig
from smolvm.build import SSH_BOOT_ARGS


def test_build_alpine_ssh_and_boot_it(client: smolvm.Client) -> None:
    progress = []
    builder = ImageBuilder(client, on_progress=progress.append)
    kernel, rootfs = builder.build_alpine_ssh(name="py-alpine", ssh_password="pw-123", rootfs_size_mb=256)
    try:
        assert kernel.is_file() and rootfs.is_file()  # the server is on this host
        img = builder.inspect("py-alpine")
        assert img.rootfs == rootfs and img.boot_args == SSH_BOOT_ARGS and img.password
        assert img.size_mib == 256
        assert "py-alpine" in {i.name for i in builder.list()}
        # Cached: the second call returns the same files without a rebuild.
        t0 = time.monotonic()
        assert builder.build_alpine_ssh(name="py-alpine", ssh_password="pw-123", rootfs_size_mb=256) == (kernel, rootfs)
        assert time.monotonic() - t0 < 5

        config = VMConfig(vm_id="py-img-vm", kernel_path=kernel, rootfs_path=rootfs, boot_args=SSH_BOOT_ARGS,
                          mem_size_mib=256)
        with SmolVM(config, client=client) as vm:
            assert vm.run("cat /etc/alpine-release").ok
            assert vm.info.config.rootfs_path is not None
    finally:
        builder.remove("py-alpine")
    with pytest.raises(smolvm.ImageError) as e:
        builder.inspect("py-alpine")
    assert e.value.code == "not_found"


@pytest.mark.parametrize(
    "kwargs",
    [{"name": ""}, {"ssh_password": ""}, {"rootfs_size_mb": 0}, {"rootfs_size_mb": "big"}],
)
def test_build_bad_arguments(client: smolvm.Client, kwargs: dict) -> None:
    with pytest.raises(smolvm.ValidationError):
        ImageBuilder(client).build_alpine_ssh(**kwargs)


def test_build_refused_by_server_builds_nothing(client: smolvm.Client) -> None:
    before = {i.name for i in ImageBuilder(client).list()}
    with pytest.raises(smolvm.SmolVMError) as e:
        ImageBuilder(client).build("py bad name!", "alpine")
    assert e.value.code == "invalid"
    assert {i.name for i in ImageBuilder(client).list()} == before


def test_ssh_boot_args_match_the_go_sdk() -> None:
    import re
    from pathlib import Path

    go = (Path(__file__).resolve().parents[2] / "image" / "image.go").read_text()
    m = re.search(r'const SSHBootArgs = "([^"]*)"', go)
    assert m and m.group(1) == SSH_BOOT_ARGS
