"""Image building: ``ImageBuilder().build_alpine_ssh()`` and ``SSH_BOOT_ARGS``.

Images are built by the server (no Docker), cached by name and by a
fingerprint of their inputs: a second build with the same inputs returns
the cached files at once.

::

    from smolvm import ImageBuilder, SmolVM, VMConfig
    from smolvm.build import SSH_BOOT_ARGS

    kernel, rootfs = ImageBuilder().build_alpine_ssh()
    config = VMConfig(vm_id="my-vm", kernel_path=kernel, rootfs_path=rootfs, boot_args=SSH_BOOT_ARGS)
    with SmolVM(config) as vm:
        print(vm.run("cat /etc/alpine-release").output)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from smolvm._client import Client, ErrorContext, error_from_detail, quote
from smolvm.exceptions import ImageError, ValidationError

logger = logging.getLogger("smolvm")

#: The kernel command line that boots a smolvm image into its guest agent
#: (which serves SSH). The same string as the Go SDK's ``image.SSHBootArgs``.
SSH_BOOT_ARGS = (
    "console=ttyS0 quiet panic=-1 pci=off ipv6.disable=1 rcupdate.rcu_expedited=1 "
    "cryptomgr.notests i8042.noaux i8042.nokbd"
)


@dataclass(frozen=True)
class Image:
    """A built image: the files a VM boots from and what it was built from."""

    name: str
    kernel: Path
    rootfs: Path
    initrd: Optional[Path]
    boot_args: str
    size_mib: int
    source: str
    password: bool
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, d: Dict[str, Any]) -> "Image":
        return cls(
            name=str(d.get("name", "")),
            kernel=Path(d.get("kernel") or ""),
            rootfs=Path(d.get("rootfs") or ""),
            initrd=Path(d["initrd"]) if d.get("initrd") else None,
            boot_args=str(d.get("boot_args") or ""),
            size_mib=int(d.get("size_mib") or 0),
            source=str(d.get("source") or ""),
            password=bool(d.get("password")),
            raw=dict(d),
        )


class ImageBuilder:
    """Builds VM images with SSH (through the smolvm server).

    Args:
        client: The :class:`smolvm.Client` to use; default: the default server.
        on_progress: Called with each progress message of a build.
    """

    def __init__(self, client: Optional[Client] = None, *,
                 on_progress: Optional[Callable[[str], None]] = None) -> None:
        self._client = client or Client()
        self._on_progress = on_progress

    def build_alpine_ssh(
        self,
        name: str = "alpine-ssh",
        ssh_password: str = "smolvm",
        rootfs_size_mb: int = 512,
    ) -> Tuple[Path, Path]:
        """Build (or return the cached) Alpine Linux image with SSH.

        Root logs in with ``ssh_password``; boot it with
        :data:`SSH_BOOT_ARGS`.

        Args:
            name: Image name for caching.
            ssh_password: Root password for SSH (default ``smolvm``).
            rootfs_size_mb: Size of the root filesystem in MB.

        Returns:
            ``(kernel_path, rootfs_path)`` on the server's host.

        Raises:
            ImageError: If the build fails.
        """
        if not isinstance(ssh_password, str) or not ssh_password:
            raise ValidationError("ssh_password must be a non-empty str", {"field": "ssh_password"})
        img = self.build(name, "alpine", size_mib=rootfs_size_mb, password=ssh_password)
        return img.kernel, img.rootfs

    def build(
        self,
        name: str,
        source: str = "alpine",
        *,
        size_mib: Optional[int] = None,
        password: Optional[str] = None,
        authorized_keys: Sequence[str] = (),
        packages: Sequence[str] = (),
        force: bool = False,
    ) -> Image:
        """Build an image from ``source`` (``alpine``, ``debian``, ``oci:REF``, ``dir:PATH``, ...)."""
        if not isinstance(name, str) or not name:
            raise ValidationError("name must be a non-empty image name", {"field": "name"})
        if size_mib is not None and (isinstance(size_mib, bool) or not isinstance(size_mib, int) or size_mib < 1):
            raise ValidationError(f"rootfs size must be a positive number of MB, got {size_mib!r}",
                                  {"field": "rootfs_size_mb"})
        body: Dict[str, Any] = {"name": name, "from": source}
        if size_mib:
            body["size_mib"] = size_mib
        if password:
            body["password"] = password
        if authorized_keys:
            body["authorized_keys"] = list(authorized_keys)
        if packages:
            body["packages"] = list(packages)
        if force:
            body["force"] = True
        ctx = ErrorContext("build image", image=name)
        with self._client.open("POST", "/images", json_body=body, timeout=1800.0, ctx=ctx,
                               headers={"Accept": "application/x-ndjson"}) as r:
            for line in r.iter_lines():
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                except ValueError as e:
                    raise ImageError(f"build image {name}: bad event from the server: {line[:200]!r}") from e
                t = ev.get("type")
                if t == "progress":
                    msg = str(ev.get("message") or "")
                    logger.info("image %s: %s", name, msg)
                    if self._on_progress:
                        self._on_progress(msg)
                elif t == "result" and isinstance(ev.get("image"), dict):
                    return Image.from_api(ev["image"])
                elif t == "error":
                    err = error_from_detail(200, ev.get("error") or {}, ctx)
                    if isinstance(err, ValidationError):
                        raise err
                    raise ImageError(err.message, err.details, code=err.code, status=err.status)
        raise ImageError(f"build image {name}: the server ended the build without a result")

    def list(self) -> List[Image]:
        """Every built image."""
        data = self._client.call("GET", "/images", ctx=ErrorContext("list images"))
        return [Image.from_api(i) for i in (data or {}).get("images") or []]

    def inspect(self, name: str) -> Image:
        """One built image; :class:`ImageError` (code ``not_found``) if there is none."""
        data = self._client.call("GET", f"/images/{quote(name)}", ctx=ErrorContext("inspect image", image=name))
        return Image.from_api(data or {})

    def remove(self, name: str) -> None:
        """Remove a built image."""
        self._client.call("DELETE", f"/images/{quote(name)}", ctx=ErrorContext("remove image", image=name))


__all__ = ["SSH_BOOT_ARGS", "ImageBuilder", "Image"]
