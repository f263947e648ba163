"""Data types of the smolvm client: configs, VM info, command results.

The names and fields follow the Python SmolVM (``VMConfig``, ``VMInfo``,
``VMState``, ``CommandResult``); smolvm's additions are extra fields with
defaults, so code written for the reference keeps working.
"""

from __future__ import annotations

import base64
import enum
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from smolvm.exceptions import ValidationError

PathLike = Union[str, "os.PathLike[str]"]

# The same patterns the Go SDK checks (config.go), so a bad id or env name
# fails here, before a request is made.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class VMState(str, enum.Enum):
    """A VM's lifecycle state (the Go SDK's ``VMState``)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"
    HIBERNATED = "hibernated"
    DELETED = "deleted"

    def __str__(self) -> str:
        return self.value


def validate_vm_id(vm_id: Any, field_name: str = "vm_id") -> str:
    """Check a VM id as the server would; raise :class:`ValidationError`."""
    if not isinstance(vm_id, str) or not _ID_RE.match(vm_id):
        raise ValidationError(
            f"{field_name} {vm_id!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            {"field": field_name},
        )
    return vm_id


def validate_env_name(name: Any) -> str:
    """Check an environment variable name; raise :class:`ValidationError`."""
    if not isinstance(name, str) or not _ENV_RE.match(name):
        raise ValidationError(
            f"environment variable name {name!r} is not valid: use letters, digits and '_', "
            "not starting with a digit",
            {"field": "env"},
        )
    return name


def validate_env(env: Any, field_name: str = "env_vars") -> Dict[str, str]:
    """Check a mapping of environment variables; return a plain dict copy."""
    if not isinstance(env, Mapping):
        raise ValidationError(f"{field_name} must be a dict of str to str, not {type(env).__name__}",
                              {"field": field_name})
    out: Dict[str, str] = {}
    for k, v in env.items():
        validate_env_name(k)
        if not isinstance(v, str):
            raise ValidationError(f"{field_name}[{k!r}] must be a str, not {type(v).__name__}",
                                  {"field": field_name})
        out[k] = v
    return out


def check_size(value: Any, name: str, *, allow_none: bool = True) -> Optional[int]:
    """Check an optional positive integer size (MiB, vCPUs)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an int, not {type(value).__name__}", {"field": name})
    if value < 1:
        raise ValidationError(f"{name} must be at least 1, got {value}", {"field": name})
    return value


def check_timeout(value: Any, name: str) -> float:
    """Check a positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{name} must be a number of seconds, not {type(value).__name__}",
                              {"field": name})
    if not value > 0 or value != value or value == float("inf"):
        raise ValidationError(f"{name} must be a positive number of seconds, got {value}",
                              {"field": name})
    return float(value)


def _opt_path(value: Any, name: str) -> Optional[Path]:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if str(p) == "" or str(p) == ".":
            raise ValidationError(f"{name} must not be empty", {"field": name})
        return p
    raise ValidationError(f"{name} must be a path, not {type(value).__name__}", {"field": name})


@dataclass(frozen=True)
class VMConfig:
    """Configuration for creating a microVM.

    The reference's fields, with smolvm's defaults: sizes left ``None`` are
    the server's defaults (1 vCPU, 512 MiB memory, a 512 MiB disk or the
    image's size if bigger). ``kernel_path`` and ``rootfs_path`` boot
    explicit files (paths on the server's host, e.g. from
    :meth:`ImageBuilder.build_alpine_ssh`); left ``None``, the VM boots the
    default image (or ``image``). Every smolvm VM runs smolvm's guest agent,
    so every image can run commands.

    Attributes:
        vm_id: The VM's id; ``None`` makes a random ``vm-xxxxxxxx``.
        vcpu_count: Virtual CPUs (at most the host's CPUs).
        mem_size_mib: Guest memory in MiB (at least 128, at most host RAM).
        kernel_path: Kernel image to boot.
        rootfs_path: Root filesystem image (copied, never changed).
        boot_args: Kernel command line; ``None`` = the image's
            (:data:`smolvm.build.SSH_BOOT_ARGS`).
        retain_disk_on_delete: Keep the VM's disk when it is deleted.
        env_vars: Environment every command in the guest sees, persisted
            across restarts.
        disk_size_mib: Size of the VM's own disk in MiB (smolvm).
        image: Name of a built image to boot (smolvm).
        initrd_path: A smolvm agent initramfs (smolvm; rarely needed).
        no_egress: Cut the VM off from the host's networks (smolvm).
    """

    vm_id: Optional[str] = None
    vcpu_count: Optional[int] = None
    mem_size_mib: Optional[int] = None
    kernel_path: Optional[Path] = None
    rootfs_path: Optional[Path] = None
    boot_args: Optional[str] = None
    retain_disk_on_delete: bool = False
    env_vars: Dict[str, str] = field(default_factory=dict)
    disk_size_mib: Optional[int] = None
    image: Optional[str] = None
    initrd_path: Optional[Path] = None
    no_egress: bool = False

    def __post_init__(self) -> None:
        # Frozen: fill in and normalise through object.__setattr__.
        vm_id = self.vm_id
        if vm_id is None:
            vm_id = f"vm-{uuid.uuid4().hex[:8]}"
        set_ = object.__setattr__
        set_(self, "vm_id", validate_vm_id(vm_id))
        set_(self, "vcpu_count", check_size(self.vcpu_count, "vcpu_count"))
        set_(self, "mem_size_mib", check_size(self.mem_size_mib, "mem_size_mib"))
        set_(self, "disk_size_mib", check_size(self.disk_size_mib, "disk_size_mib"))
        set_(self, "kernel_path", _opt_path(self.kernel_path, "kernel_path"))
        set_(self, "rootfs_path", _opt_path(self.rootfs_path, "rootfs_path"))
        set_(self, "initrd_path", _opt_path(self.initrd_path, "initrd_path"))
        if (self.kernel_path is None) != (self.rootfs_path is None):
            raise ValidationError(
                "kernel_path and rootfs_path go together: give both (e.g. from "
                "ImageBuilder().build_alpine_ssh()) or neither (the default image)",
                {"field": "kernel_path" if self.kernel_path is None else "rootfs_path"},
            )
        if self.image is not None and self.kernel_path is not None:
            raise ValidationError("give image or kernel_path/rootfs_path, not both", {"field": "image"})
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise ValidationError("image must be a non-empty image name", {"field": "image"})
        if self.boot_args is not None and not isinstance(self.boot_args, str):
            raise ValidationError("boot_args must be a str", {"field": "boot_args"})
        for flag in ("retain_disk_on_delete", "no_egress"):
            if not isinstance(getattr(self, flag), bool):
                raise ValidationError(f"{flag} must be a bool", {"field": flag})
        set_(self, "env_vars", validate_env(self.env_vars))

    def to_api(self) -> Dict[str, Any]:
        """The ``CreateVM`` request body (docs/api.md) for this config."""
        body: Dict[str, Any] = {"id": self.vm_id}
        if self.vcpu_count is not None:
            body["vcpus"] = self.vcpu_count
        if self.mem_size_mib is not None:
            body["memory_mib"] = self.mem_size_mib
        if self.disk_size_mib is not None:
            body["disk_mib"] = self.disk_size_mib
        if self.image is not None:
            body["image"] = self.image
        if self.kernel_path is not None:
            body["kernel_path"] = os.fspath(self.kernel_path)
        if self.rootfs_path is not None:
            body["rootfs_path"] = os.fspath(self.rootfs_path)
        if self.initrd_path is not None:
            body["initrd_path"] = os.fspath(self.initrd_path)
        if self.boot_args:
            body["boot_args"] = self.boot_args
        if self.env_vars:
            body["env"] = dict(self.env_vars)
        if self.retain_disk_on_delete:
            body["retain_disk_on_delete"] = True
        if self.no_egress:
            body["no_egress"] = True
        return body

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> "VMConfig":
        """The config the server reports in ``VMInfo.config``."""
        def size(key: str) -> Optional[int]:
            v = d.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

        vm_id = d.get("id") or None
        kernel = d.get("kernel_path") or None
        rootfs = d.get("rootfs_path") or None
        if (kernel is None) != (rootfs is None):
            kernel = rootfs = None
        try:
            return cls(
                vm_id=vm_id,
                vcpu_count=size("vcpus"),
                mem_size_mib=size("memory_mib"),
                disk_size_mib=size("disk_mib"),
                kernel_path=kernel,
                rootfs_path=rootfs,
                initrd_path=d.get("initrd_path") or None,
                image=(d.get("image") or None) if kernel is None else None,
                boot_args=d.get("boot_args") or None,
                env_vars=dict(d.get("env") or {}),
                retain_disk_on_delete=bool(d.get("retain_disk_on_delete")),
                no_egress=bool(d.get("no_egress")),
            )
        except ValidationError:
            # What the server holds is the truth; never fail to show it.
            c = object.__new__(cls)
            for f, v in (("vm_id", vm_id), ("vcpu_count", size("vcpus")),
                         ("mem_size_mib", size("memory_mib")), ("kernel_path", kernel),
                         ("rootfs_path", rootfs), ("boot_args", d.get("boot_args") or None),
                         ("retain_disk_on_delete", bool(d.get("retain_disk_on_delete"))),
                         ("env_vars", dict(d.get("env") or {})), ("disk_size_mib", size("disk_mib")),
                         ("image", d.get("image") or None), ("initrd_path", d.get("initrd_path") or None),
                         ("no_egress", bool(d.get("no_egress")))):
                object.__setattr__(c, f, v)
            return c


@dataclass(frozen=True)
class NetworkConfig:
    """How a VM is reached (the reference's ``NetworkConfig``).

    Attributes:
        guest_ip: The guest's address.
        gateway_ip: The host end of the guest's link.
        tap_device: The host TAP device ("" in user-mode networking).
        mode: ``"tap"`` or ``"user"``.
        ssh_addr: ``host:port`` the host reaches the guest's SSH at.
        prefix_len: Length of the guest's subnet prefix.
        proxy: User-mode networking: the guest's HTTP proxy, its only way
            out ("" = no egress, or TAP networking).
    """

    guest_ip: str
    gateway_ip: str = ""
    tap_device: str = ""
    mode: str = ""
    ssh_addr: str = ""
    prefix_len: int = 0
    proxy: str = ""

    @classmethod
    def from_api(cls, d: Optional[Mapping[str, Any]]) -> Optional["NetworkConfig"]:
        if not d or not d.get("guest_ip"):
            return None
        return cls(
            guest_ip=str(d.get("guest_ip", "")),
            gateway_ip=str(d.get("gateway") or d.get("host_ip") or ""),
            tap_device=str(d.get("tap") or ""),
            mode=str(d.get("mode") or ""),
            ssh_addr=str(d.get("ssh_addr") or ""),
            prefix_len=int(d.get("prefix_len") or 0),
            proxy=str(d.get("proxy") or ""),
        )


def _state(value: Any) -> VMState:
    try:
        return VMState(value)
    except ValueError:
        return VMState.ERROR


@dataclass(frozen=True)
class VMInfo:
    """What smolvm knows about a VM (the reference's ``VMInfo`` plus smolvm's fields).

    ``raw`` is the server's JSON as it came, for fields not mirrored here.
    """

    vm_id: str
    status: VMState
    config: VMConfig
    network: Optional[NetworkConfig] = None
    pid: Optional[int] = None
    data_dir: Optional[Path] = None
    disk: str = ""
    console_log: str = ""
    kernel: str = ""
    backend: str = ""
    created_at: str = ""
    started_at: str = ""
    error: str = ""
    from_snapshot: str = ""
    boot_path: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> "VMInfo":
        return cls(
            vm_id=str(d.get("id", "")),
            status=_state(d.get("state")),
            config=VMConfig.from_api(d.get("config") or {"id": d.get("id")}),
            network=NetworkConfig.from_api(d.get("network")),
            pid=d.get("pid") or None,
            data_dir=Path(d["data_dir"]) if d.get("data_dir") else None,
            disk=str(d.get("disk") or ""),
            console_log=str(d.get("console_log") or ""),
            kernel=str(d.get("kernel") or ""),
            backend=str(d.get("backend") or ""),
            created_at=str(d.get("created_at") or ""),
            started_at=str(d.get("started_at") or ""),
            error=str(d.get("error") or ""),
            from_snapshot=str(d.get("from_snapshot") or ""),
            boot_path=str(d.get("boot_path") or ""),
            raw=dict(d),
        )


def _stream(d: Mapping[str, Any], name: str) -> bytes:
    text = d.get(name)
    if text is not None:
        return str(text).encode("utf-8")
    b64 = d.get(name + "_b64")
    if b64:
        return base64.b64decode(b64)
    return b""


@dataclass(frozen=True)
class CommandResult:
    """The result of a command run in the guest (the reference's ``CommandResult``).

    A non-zero exit is a result, not an exception.

    Attributes:
        exit_code: The command's exit status (0 = success).
        stdout: Standard output, as text (bytes that are not UTF-8 are
            replaced; :attr:`stdout_bytes` has them exactly).
        stderr: Standard error, as text.
        stdout_bytes: Standard output, byte for byte.
        stderr_bytes: Standard error, byte for byte.
        stdout_truncated: Output went past the output limit and was cut.
        stderr_truncated: As ``stdout_truncated``, for stderr.
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command succeeded (``exit_code == 0``)."""
        return self.exit_code == 0

    @property
    def output(self) -> str:
        """Standard output with leading and trailing whitespace removed."""
        return self.stdout.strip()

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> "CommandResult":
        out, err = _stream(d, "stdout"), _stream(d, "stderr")
        return cls(
            exit_code=int(d.get("exit_code", -1)),
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            stdout_bytes=out,
            stderr_bytes=err,
            stdout_truncated=bool(d.get("stdout_truncated")),
            stderr_truncated=bool(d.get("stderr_truncated")),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of a VM (memory, device state and disk; or the disk alone)."""

    name: str
    source_vm: str = ""
    created_at: str = ""
    disk_only: bool = False
    image: str = ""
    vcpu_count: int = 0
    mem_size_mib: int = 0
    disk_size_mib: int = 0
    size_bytes: int = 0
    dependents: List[str] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def snapshot_id(self) -> str:
        """The reference's name for :attr:`name`."""
        return self.name

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> "SnapshotInfo":
        return cls(
            name=str(d.get("name", "")),
            source_vm=str(d.get("source_vm") or ""),
            created_at=str(d.get("created_at") or ""),
            disk_only=bool(d.get("disk_only")),
            image=str(d.get("image") or ""),
            vcpu_count=int(d.get("vcpus") or 0),
            mem_size_mib=int(d.get("memory_mib") or 0),
            disk_size_mib=int(d.get("disk_mib") or 0),
            size_bytes=int(d.get("size_bytes") or 0),
            dependents=list(d.get("dependents") or []),
            raw=dict(d),
        )


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded to a guest port."""

    host_addr: str
    host_port: int
    guest_port: int

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> "PortForward":
        return cls(
            host_addr=str(d.get("host_addr") or "127.0.0.1"),
            host_port=int(d.get("host_port") or 0),
            guest_port=int(d.get("guest_port") or 0),
        )
