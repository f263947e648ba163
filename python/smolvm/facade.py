"""``SmolVM``: one microVM, with the Python SmolVM's API, driven through ``smolvm serve``.

::

    from smolvm import SmolVM

    with SmolVM() as vm:                 # created here, started on entry
        print(vm.run("uname -r").output)
                                         # stopped and deleted on exit
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Union

from smolvm import _files
from smolvm._client import Client, ErrorContext, error_from_detail, quote
from smolvm.exceptions import (
    GuestFileNotFoundError,
    SmolVMError,
    ValidationError,
    VMAlreadyExistsError,
    VMNotFoundError,
    VMNotRunningError,
)
from smolvm.types import (
    CommandResult,
    PathLike,
    PortForward,
    SnapshotInfo,
    VMConfig,
    VMInfo,
    VMState,
    check_size,
    check_timeout,
    validate_env,
    validate_env_name,
    validate_vm_id,
)

logger = logging.getLogger("smolvm")

# Extra seconds a request waits beyond the operation's own timeout, so the
# server (which enforces the timeout and kills the command) answers first.
_GRACE = 30.0


class SmolVM:
    """A handle on one microVM.

    ``SmolVM()`` creates an auto-configured VM (default image, 1 vCPU,
    512 MiB memory, 512 MiB disk); ``SmolVM(mem_size_mib=..., disk_size_mib=...)``
    sizes it; ``SmolVM(config)`` creates one from a :class:`VMConfig`;
    ``SmolVM(vm_id="...")`` / :meth:`from_id` reconnects to an existing VM.
    A created VM is in state ``created`` until :meth:`start`.

    Used as a context manager, a VM this handle created is started on entry
    and stopped and deleted on exit; a reconnected VM is only stopped.

    Args:
        config: VM configuration. Mutually exclusive with ``vm_id``.
        vm_id: Id of an existing VM to reconnect to.
        mem_size_mib: Memory for auto-config mode (no ``config``, no ``vm_id``).
        disk_size_mib: Disk for auto-config mode.
        client: The :class:`smolvm.Client` to use; default: a new one for
            the default server (started if none answers).
        **kwargs: ``data_dir``, ``socket_dir``, ``backend``, ``ssh_user`` and
            ``ssh_key_path`` are accepted for compatibility with the Python
            SmolVM; smolvm's server owns those settings, so only ``None``
            (or ``"root"`` for ``ssh_user``) is allowed.

    Raises:
        ValueError: (a :class:`~smolvm.exceptions.ValidationError`) if both
            ``config`` and ``vm_id`` are given, or sizes with either.
        VMNotFoundError: When reconnecting to an id that does not exist.
    """

    def __init__(
        self,
        config: Optional[VMConfig] = None,
        *,
        vm_id: Optional[str] = None,
        mem_size_mib: Optional[int] = None,
        disk_size_mib: Optional[int] = None,
        client: Optional[Client] = None,
        **kwargs: Any,
    ) -> None:
        _check_compat_kwargs(kwargs)
        if config is not None and vm_id is not None:
            raise ValidationError("Provide either config or vm_id, not both.", {"field": "vm_id"})
        if (config is not None or vm_id is not None) and (mem_size_mib is not None or disk_size_mib is not None):
            raise ValidationError(
                "mem_size_mib and disk_size_mib can only be set when both config and vm_id are "
                "omitted (auto-config mode).",
                {"field": "mem_size_mib" if mem_size_mib is not None else "disk_size_mib"},
            )
        if config is not None and not isinstance(config, VMConfig):
            raise ValidationError(f"config must be a VMConfig, not {type(config).__name__}", {"field": "config"})
        self._client = client or Client()
        self._owns_client = client is None
        if vm_id is not None:
            validate_vm_id(vm_id)
            self._vm_id = vm_id
            self._info = self._get_info()
            self._owns_vm = False
            return
        if config is None:
            config = VMConfig(
                vm_id=None,
                mem_size_mib=check_size(mem_size_mib, "mem_size_mib"),
                disk_size_mib=check_size(disk_size_mib, "disk_size_mib"),
            )
        self._vm_id = str(config.vm_id)
        self._set_info(self._create(config))
        self._owns_vm = True

    def _create(self, config: VMConfig) -> Any:
        body = config.to_api()
        ctx = ErrorContext("create", vm_id=self._vm_id)
        try:
            return self._client.call("POST", "/vms", json_body=body, ctx=ctx)
        except VMAlreadyExistsError:
            if not config.retain_disk_on_delete:
                raise
            # The reference's retain_disk_on_delete means "a later create
            # with the same id reuses the disk". smolvm keeps the disk and
            # refuses the id until asked to reuse it: ask, if no live VM
            # holds the id (then the conflict is the kept disk).
            try:
                self._client.call("GET", f"/vms/{quote(self._vm_id)}", ctx=ctx)
                raise
            except VMNotFoundError:
                pass
            return self._client.call("POST", "/vms", json_body={**body, "reuse_disk": True}, ctx=ctx)

    # -- constructors ----------------------------------------------------

    @classmethod
    def from_id(cls, vm_id: str, *, client: Optional[Client] = None, **kwargs: Any) -> "SmolVM":
        """Reconnect to an existing VM by id (from any process).

        A reconnected VM is not owned: the context manager only stops it.

        Raises:
            VMNotFoundError: If no VM with this id exists.
        """
        return cls(vm_id=vm_id, client=client, **kwargs)

    @classmethod
    def from_snapshot(
        cls,
        name: str,
        *,
        vm_id: Optional[str] = None,
        env_vars: Optional[Mapping[str, str]] = None,
        client: Optional[Client] = None,
    ) -> "SmolVM":
        """Make a new, running VM from a snapshot (smolvm).

        The clone has its own id, IP, MAC, hostname, SSH keys and machine-id;
        its processes and files are as they were at the capture. The handle
        owns the new VM.

        Raises:
            SnapshotNotFoundError: If no snapshot of this name exists.
        """
        _check_name(name, "snapshot name")
        body: Dict[str, Any] = {"from_snapshot": name}
        if vm_id is not None:
            body["id"] = validate_vm_id(vm_id)
        if env_vars:
            body["env"] = validate_env(env_vars)
        self = cls.__new__(cls)
        self._client = client or Client()
        self._owns_client = client is None
        self._vm_id = vm_id or ""
        data = self._client.call("POST", "/vms", json_body=body,
                                 ctx=ErrorContext("create", snapshot=name), timeout=300.0)
        self._set_info(data)
        self._vm_id = self._info.vm_id
        self._owns_vm = True
        return self

    @classmethod
    def _adopt(cls, client: Client, data: Mapping[str, Any], owned: bool) -> "SmolVM":
        self = cls.__new__(cls)
        self._client = client
        self._owns_client = False
        self._vm_id = str(data.get("id", ""))
        self._set_info(data)
        self._owns_vm = owned
        return self

    @classmethod
    def list(
        cls,
        *,
        state: Optional[Union[VMState, str]] = None,
        image: Optional[str] = None,
        client: Optional[Client] = None,
    ) -> List[VMInfo]:
        """Every VM the server knows, optionally only those in ``state`` / from ``image``."""
        c = client or Client()
        st = state.value if isinstance(state, VMState) else state
        data = c.call("GET", "/vms", query={"state": st, "image": image}, ctx=ErrorContext("list"))
        return [VMInfo.from_api(v) for v in (data or {}).get("vms") or []]

    # -- lifecycle -------------------------------------------------------

    def start(self, boot_timeout: float = 30.0) -> "SmolVM":
        """Start the VM and return once commands can run.

        Environment variables from the config are in place before it returns.
        Starting a running VM is a no-op.

        Args:
            boot_timeout: Maximum seconds to wait for boot.

        Returns:
            ``self`` for method chaining.

        Raises:
            OperationTimeoutError: If the VM was not ready in time (nothing
                is left half-started).
        """
        t = check_timeout(boot_timeout, "boot_timeout")
        if self._info.status == VMState.RUNNING:
            logger.info("VM %s already running; start() is a no-op", self._vm_id)
            return self
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/start",
                                 json_body={"boot_timeout_seconds": t}, timeout=t + _GRACE + 60.0,
                                 ctx=ErrorContext("start", vm_id=self._vm_id, timeout=t))
        self._set_info(data)
        return self

    def stop(self, timeout: float = 3.0) -> "SmolVM":
        """Shut the VM down cleanly; kill it if it has not stopped after ``timeout`` seconds.

        Returns:
            ``self`` for method chaining.
        """
        t = check_timeout(timeout, "timeout")
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/stop",
                                 json_body={"timeout_seconds": t}, timeout=t + _GRACE,
                                 ctx=ErrorContext("stop", vm_id=self._vm_id, timeout=t))
        self._set_info(data)
        return self

    def delete(self) -> None:
        """Delete the VM: its process, network, firewall rules, state and disk
        (unless ``retain_disk_on_delete``)."""
        self._client.call("DELETE", f"/vms/{quote(self._vm_id)}", ctx=ErrorContext("delete", vm_id=self._vm_id))
        self._info = _with_status(self._info, VMState.DELETED)

    def pause(self, *, to_disk: bool = False) -> "SmolVM":
        """Pause the VM (smolvm); ``to_disk`` hibernates it, freeing its memory."""
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/pause",
                                 json_body={"to_disk": True} if to_disk else {},
                                 ctx=ErrorContext("pause", vm_id=self._vm_id))
        self._set_info(data)
        return self

    def resume(self) -> "SmolVM":
        """Resume a paused or hibernated VM (smolvm)."""
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/resume",
                                 ctx=ErrorContext("resume", vm_id=self._vm_id))
        self._set_info(data)
        return self

    def refresh(self) -> "SmolVM":
        """Update the cached :attr:`info` and :attr:`status` from the server.

        Returns:
            ``self`` for method chaining.
        """
        self._info = self._get_info()
        return self

    def close(self) -> None:
        """Release this handle's connections; the VM itself is left as it is."""
        if self._owns_client:
            self._client.close()

    # -- commands --------------------------------------------------------

    def run(
        self,
        command: str,
        timeout: float = 30,
        shell: str = "login",
        *,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[Union[str, bytes]] = None,
        on_output: Optional[Callable[[str, bytes], None]] = None,
    ) -> CommandResult:
        """Run a shell command in the guest and wait for it.

        The command runs under the guest's ``/bin/sh -c`` with the VM's
        environment (``env_vars``, :meth:`set_env_vars`) in both shell modes.
        A non-zero exit is a result, not an exception.

        Args:
            command: Shell command line.
            timeout: Seconds before the command is killed.
            shell: ``"login"`` (default) or ``"raw"``, as in the Python SmolVM.
            env: Extra variables for this command only (smolvm).
            stdin: Data for the command's standard input (smolvm).
            on_output: Called with ``("stdout" | "stderr", bytes)`` as the
                output comes (smolvm): the command's output is streamed
                instead of buffered by the server, and also collected into
                the result.

        Returns:
            :class:`~smolvm.types.CommandResult`.

        Raises:
            OperationTimeoutError: The command ran past ``timeout``; it was killed.
            SmolVMError: (a :class:`VMNotRunningError`) if the VM is not running.
        """
        if not isinstance(command, str) or not command.strip():
            raise ValidationError("command must be a non-empty str", {"field": "command"})
        t = check_timeout(timeout, "timeout")
        if shell not in ("login", "raw"):
            raise ValidationError(f"shell must be 'login' or 'raw', not {shell!r}", {"field": "shell"})
        body: Dict[str, Any] = {"cmd": command, "timeout_seconds": t}
        if env:
            body["env"] = validate_env(env, "env")
        if stdin is not None:
            if isinstance(stdin, str):
                body["stdin"] = stdin
            elif isinstance(stdin, (bytes, bytearray)):
                body["stdin_b64"] = base64.b64encode(bytes(stdin)).decode()
            else:
                raise ValidationError("stdin must be str or bytes", {"field": "stdin"})
        ctx = ErrorContext("run", vm_id=self._vm_id, timeout=t)
        try:
            if on_output is not None:
                return self._run_streamed(body, t, ctx, on_output)
            data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/exec", json_body=body,
                                     timeout=t + _GRACE, ctx=ctx)
        except VMNotRunningError as e:
            self._refresh_quietly()
            raise VMNotRunningError(f"Cannot run command: VM is {self._info.status.value}",
                                    {"vm_id": self._vm_id, "server": e.message},
                                    code=e.code, status=e.status) from e
        return CommandResult.from_api(data or {})

    def _run_streamed(self, body: Dict[str, Any], t: float, ctx: ErrorContext,
                      on_output: Callable[[str, bytes], None]) -> CommandResult:
        out: Dict[str, List[bytes]] = {"stdout": [], "stderr": []}
        # The stream may be quiet for as long as the command is: the socket
        # timeout is the command's timeout plus the grace.
        with self._client.open("POST", f"/vms/{quote(self._vm_id)}/exec", query={"stream": "true"},
                               json_body=body, headers={"Accept": "application/x-ndjson"},
                               timeout=t + _GRACE, ctx=ctx) as r:
            for line in r.iter_lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                typ = ev.get("type")
                if typ in ("stdout", "stderr"):
                    chunk = base64.b64decode(ev.get("data_b64") or "")
                    out[typ].append(chunk)
                    on_output(typ, chunk)
                elif typ == "exit":
                    so, se = b"".join(out["stdout"]), b"".join(out["stderr"])
                    return CommandResult(exit_code=int(ev.get("exit_code", -1)),
                                         stdout=so.decode("utf-8", "replace"), stderr=se.decode("utf-8", "replace"),
                                         stdout_bytes=so, stderr_bytes=se)
                elif typ == "error":
                    raise error_from_detail(200, ev.get("error") or {}, ctx)
        raise SmolVMError("run: the server ended the output stream without an exit status",
                          {"vm_id": self._vm_id})

    def can_run_commands(self) -> bool:
        """Whether commands can run in this VM's guest.

        Every smolvm VM boots into smolvm's guest agent, whatever its image,
        so this is true for every VM that has not been deleted; whether it
        is running is :attr:`status`.
        """
        return self._info.status != VMState.DELETED

    def wait_for_ssh(self, timeout: float = 60.0) -> "SmolVM":
        """Return once the guest answers (smolvm's :meth:`start` already waits for that)."""
        check_timeout(timeout, "timeout")
        self.run("true", timeout=timeout)
        return self

    # -- environment ------------------------------------------------------

    def set_env_vars(self, env_vars: Mapping[str, str], *, merge: bool = True) -> List[str]:
        """Set environment variables every later command (and login shell) sees.

        They persist across restarts. ``merge=False`` replaces the whole set.

        Returns:
            Sorted variable names present after the update.
        """
        if not env_vars and merge:
            return []
        new = validate_env(env_vars)
        body: Dict[str, Any] = {"set": new}
        if not merge:
            old = self.list_env_vars()
            body["unset"] = sorted(k for k in old if k not in new)
        data = self._client.call("PATCH", f"/vms/{quote(self._vm_id)}/env", json_body=body,
                                 ctx=ErrorContext("set env", vm_id=self._vm_id))
        return sorted(((data or {}).get("env") or {}).keys())

    def unset_env_vars(self, keys: List[str]) -> Dict[str, str]:
        """Remove environment variables.

        Returns:
            The removed names with the values they had.
        """
        if not keys:
            return {}
        if isinstance(keys, str):
            raise ValidationError("keys must be a list of names, not a str", {"field": "keys"})
        for k in keys:
            validate_env_name(k)
        old = self.list_env_vars()
        self._client.call("PATCH", f"/vms/{quote(self._vm_id)}/env", json_body={"unset": list(keys)},
                          ctx=ErrorContext("unset env", vm_id=self._vm_id))
        return {k: old[k] for k in keys if k in old}

    def list_env_vars(self) -> Dict[str, str]:
        """The VM's environment variables (those smolvm manages)."""
        data = self._client.call("GET", f"/vms/{quote(self._vm_id)}/env", ctx=ErrorContext("list env", vm_id=self._vm_id))
        return dict((data or {}).get("env") or {})

    # -- files (smolvm) ----------------------------------------------------

    def upload_file(self, local_path: PathLike, remote_path: str, *, mode: Optional[int] = None) -> None:
        """Copy one local file to ``remote_path`` in the guest, streamed.

        The guest file is replaced atomically; missing parent directories
        are made; permission bits are kept (or ``mode``).
        """
        _files.check_guest_path(remote_path)
        src = Path(local_path)
        if src.is_dir():
            raise ValidationError(f"{src} is a directory; use upload() for a tree", {"field": "local_path"})
        with open(src, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError(f"{src} is not a regular file; use upload() for a directory",
                                      {"field": "local_path"})
            perm = stat.S_IMODE(st.st_mode) if mode is None else mode
            self._put_file(remote_path, f, st.st_size, perm)

    def write_file(self, remote_path: str, data: Union[bytes, str, IO[bytes]], *, mode: int = 0o644) -> None:
        """Write ``data`` (bytes, text, or a binary file object, streamed) to a guest file."""
        _files.check_guest_path(remote_path)
        if isinstance(data, str):
            data = data.encode()
        size = len(data) if isinstance(data, (bytes, bytearray)) else None
        self._put_file(remote_path, data, size, mode)

    def _put_file(self, remote_path: str, body: Any, size: Optional[int], mode: int) -> None:
        headers = {"Content-Type": "application/octet-stream", "X-Smolvm-Mode": f"{mode & 0o777:04o}"}
        if size is not None:
            headers["Content-Length"] = str(size)
        self._client.call("PUT", f"/vms/{quote(self._vm_id)}/files", query={"path": remote_path},
                          body=body, headers=headers,
                          ctx=ErrorContext("upload", vm_id=self._vm_id))

    def upload(self, local_path: PathLike, remote_path: str) -> None:
        """Copy a local file or directory tree to ``remote_path`` in the guest, streamed.

        A directory is sent as a tar made on the fly and unpacked at
        ``remote_path``; symlinks under it are sent as symlinks, never
        followed.
        """
        src = Path(local_path)
        if not src.is_dir():
            self.upload_file(src, remote_path)
            return
        _files.check_guest_path(remote_path)
        with _files.TarStream(src) as body:
            self._client.call("PUT", f"/vms/{quote(self._vm_id)}/files", query={"path": remote_path},
                              body=body, headers={"Content-Type": "application/x-tar"},
                              ctx=ErrorContext("upload", vm_id=self._vm_id))

    def read_file(self, remote_path: str) -> bytes:
        """The bytes of one guest file.

        Raises:
            GuestFileNotFoundError: (a ``FileNotFoundError``) if there is none.
        """
        with self._open_download(remote_path) as r:
            if (r.headers.get("Content-Type") or "").startswith("application/x-tar"):
                raise ValidationError(f"{remote_path} is a directory; use download()", {"field": "remote_path"})
            return r.read()

    def download_file(self, remote_path: str, local_path: PathLike) -> Path:
        """Copy one guest file to ``local_path`` (streamed); see :meth:`download`."""
        return self.download(remote_path, local_path)

    def download(self, remote_path: str, local_path: PathLike) -> Path:
        """Copy a guest file or directory tree to the host, as ``cp -r`` does.

        If ``local_path`` is an existing directory the copy lands inside it
        under its own name; otherwise it becomes ``local_path``. The guest is
        not trusted: names that climb out, links that point out, devices and
        setuid bits are refused or dropped, and a failure leaves nothing new
        behind.

        Returns:
            The path written.
        """
        dest = Path(local_path)
        if str(local_path).endswith(os.sep) and not dest.is_dir():
            # As cp: a trailing slash names a directory, which must exist.
            raise ValidationError(f"{local_path}: no such directory; create it first or drop the trailing slash",
                                  {"field": "local_path"})
        with self._open_download(remote_path) as r:
            name = os.path.basename(remote_path.rstrip("/")) or "root"
            if dest.is_dir():
                dest = dest / name
            try:
                if (r.headers.get("Content-Type") or "").startswith("application/x-tar"):
                    _files.extract_tar(r, dest)
                else:
                    _files.write_atomic(r, dest, r.headers.get("X-Smolvm-Mode"))
            except (http.client.HTTPException, tarfile.TarError, ConnectionError) as e:
                # The server breaks the stream off when the guest fails mid-copy.
                raise SmolVMError(f"download of {remote_path} from VM {self._vm_id} broke off: {e!r}",
                                  {"vm_id": self._vm_id, "path": remote_path}) from e
        return dest

    def _open_download(self, remote_path: str) -> Any:
        _files.check_guest_path(remote_path)
        try:
            return self._client.open("GET", f"/vms/{quote(self._vm_id)}/files", query={"path": remote_path},
                                     headers={"Accept": "*/*"},
                                     ctx=ErrorContext("download", vm_id=self._vm_id, guest_path=remote_path))
        except GuestFileNotFoundError as e:
            # The route says not_found for a missing VM too; tell them apart.
            self._get_info()
            raise e

    # -- ports -------------------------------------------------------------

    def expose(self, guest_port: int, host_port: int = 0, host_addr: str = "127.0.0.1") -> PortForward:
        """Forward ``host_addr:host_port`` on the host to ``guest_port`` (smolvm).

        ``host_port`` 0 picks a free port. Forwards survive stop and start
        and are removed on delete.
        """
        _check_port(guest_port, "guest_port")
        _check_port(host_port, "host_port", allow_zero=True)
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/ports",
                                 json_body={"guest_port": guest_port, "host_port": host_port, "host_addr": host_addr},
                                 ctx=ErrorContext("expose", vm_id=self._vm_id))
        return PortForward.from_api(data or {})

    def unexpose(self, host_port: int, host_addr: str = "127.0.0.1") -> None:
        """Remove the forward from ``host_addr:host_port`` (smolvm)."""
        _check_port(host_port, "host_port")
        self._client.call("DELETE", f"/vms/{quote(self._vm_id)}/ports",
                          query={"host_addr": host_addr, "host_port": host_port},
                          ctx=ErrorContext("unexpose", vm_id=self._vm_id))

    def list_ports(self) -> List[PortForward]:
        """The VM's port forwards (smolvm)."""
        data = self._client.call("GET", f"/vms/{quote(self._vm_id)}/ports", ctx=ErrorContext("ports", vm_id=self._vm_id))
        return [PortForward.from_api(p) for p in (data or {}).get("ports") or []]

    def expose_local(self, guest_port: int, host_port: Optional[int] = None) -> int:
        """Expose a guest TCP port on the host's 127.0.0.1 only (the Python SmolVM's name).

        Returns:
            The host port to connect to (picked when ``host_port`` is ``None``).
        """
        return self.expose(guest_port, host_port or 0).host_port

    def unexpose_local(self, host_port: int, guest_port: int) -> "SmolVM":
        """Remove a forward made by :meth:`expose_local`."""
        _check_port(guest_port, "guest_port")
        self.unexpose(host_port)
        return self

    # -- snapshots and forks (smolvm) -----------------------------------------

    def snapshot(self, name: str, *, disk_only: bool = False) -> SnapshotInfo:
        """Capture the VM's memory, device state and disk (or the disk alone) as ``name``.

        The VM is paused only for the capture.
        """
        _check_name(name, "snapshot name")
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/snapshots",
                                 json_body={"name": name, "disk_only": bool(disk_only)}, timeout=600.0,
                                 ctx=ErrorContext("snapshot", vm_id=self._vm_id, snapshot=name))
        return SnapshotInfo.from_api(data or {})

    def fork(self, count: int = 1) -> List["SmolVM"]:
        """Make ``count`` running children of this running VM; their handles own them."""
        check_size(count, "count", allow_none=False)
        data = self._client.call("POST", f"/vms/{quote(self._vm_id)}/fork", json_body={"count": count},
                                 timeout=600.0, ctx=ErrorContext("fork", vm_id=self._vm_id))
        return [SmolVM._adopt(self._client, v, owned=True) for v in (data or {}).get("vms") or []]

    def logs(self, *, tail: Optional[int] = None) -> str:
        """The VM's console log (smolvm)."""
        with self._client.open("GET", f"/vms/{quote(self._vm_id)}/logs", query={"tail": tail},
                               headers={"Accept": "text/plain"}, ctx=ErrorContext("logs", vm_id=self._vm_id)) as r:
            return r.read().decode("utf-8", "replace")

    # -- properties ------------------------------------------------------

    @property
    def vm_id(self) -> str:
        """The VM identifier."""
        return self._vm_id

    @property
    def info(self) -> VMInfo:
        """What was known at the last call (cached; :meth:`refresh` updates it)."""
        return self._info

    @property
    def status(self) -> VMState:
        """The VM's lifecycle state (cached; :meth:`refresh` updates it)."""
        return self._info.status

    @property
    def data_dir(self) -> Path:
        """The directory holding the VM's disk, console log and keys (on the server's host)."""
        if self._info.data_dir is None:
            raise SmolVMError("the server did not say where this VM's data is", {"vm_id": self._vm_id})
        return self._info.data_dir

    @property
    def client(self) -> Client:
        """The :class:`Client` this handle talks through."""
        return self._client

    def get_ip(self) -> str:
        """The guest's IP address.

        Raises:
            SmolVMError: If the VM has no network configuration.
        """
        self.refresh()
        if self._info.network is None or not self._info.network.guest_ip:
            raise SmolVMError("VM has no network configuration", {"vm_id": self._vm_id})
        return self._info.network.guest_ip

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> "SmolVM":
        # Owned VMs start on entry so the block can use the guest at once.
        if self._owns_vm and self._info.status != VMState.RUNNING:
            try:
                self.start()
            except BaseException:
                # __exit__ will not run: a VM this handle made and could
                # not start must not outlive the failed `with`.
                try:
                    self.delete()
                except Exception as e:
                    logger.warning("Failed to delete VM %s after a failed start: %s", self._vm_id, e)
                self.close()
                raise
        return self

    def __exit__(self, *args: object) -> None:
        try:
            if self._info.status in (VMState.RUNNING, VMState.PAUSED):
                try:
                    self.stop()
                except Exception as e:  # best effort, as the reference does
                    logger.warning("Failed to stop VM %s on context exit: %s", self._vm_id, e)
            if self._owns_vm:
                try:
                    self.delete()
                except Exception as e:
                    logger.warning("Failed to delete VM %s on context exit: %s", self._vm_id, e)
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"SmolVM(vm_id={self._vm_id!r}, status={self._info.status.value!r})"

    # -- internals ---------------------------------------------------------

    def _get_info(self) -> VMInfo:
        data = self._client.call("GET", f"/vms/{quote(self._vm_id)}", ctx=ErrorContext("info", vm_id=self._vm_id))
        return VMInfo.from_api(data or {})

    def _set_info(self, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise SmolVMError("the server answered without the VM's info", {"vm_id": self._vm_id})
        self._info = VMInfo.from_api(data)

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except (SmolVMError, VMNotFoundError):
            pass


def list_snapshots(*, client: Optional[Client] = None) -> List[SnapshotInfo]:
    """Every snapshot the server knows (smolvm)."""
    data = (client or Client()).call("GET", "/snapshots", ctx=ErrorContext("list snapshots"))
    return [SnapshotInfo.from_api(s) for s in (data or {}).get("snapshots") or []]


def get_snapshot(name: str, *, client: Optional[Client] = None) -> SnapshotInfo:
    """One snapshot (smolvm). Raises :class:`SnapshotNotFoundError` if there is none."""
    _check_name(name, "snapshot name")
    data = (client or Client()).call("GET", f"/snapshots/{quote(name)}", ctx=ErrorContext("snapshot", snapshot=name))
    return SnapshotInfo.from_api(data or {})


def remove_snapshot(name: str, *, client: Optional[Client] = None) -> None:
    """Remove a snapshot (smolvm); refused with :class:`ResourceInUseError` while VMs depend on it."""
    _check_name(name, "snapshot name")
    (client or Client()).call("DELETE", f"/snapshots/{quote(name)}", ctx=ErrorContext("remove snapshot", snapshot=name))


def _with_status(info: VMInfo, status: VMState) -> VMInfo:
    import dataclasses

    return dataclasses.replace(info, status=status)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValidationError(f"{what} {name!r} is not valid", {"field": "name"})


def _check_port(port: Any, name: str, *, allow_zero: bool = False) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not ((allow_zero and port == 0) or 1 <= port <= 65535):
        raise ValidationError(f"{name} must be 1-65535{' or 0 for a free one' if allow_zero else ''}, got {port!r}",
                              {"field": name})


def _check_compat_kwargs(kwargs: Mapping[str, Any]) -> None:
    allowed = {"data_dir", "socket_dir", "backend", "ssh_user", "ssh_key_path"}
    for k, v in kwargs.items():
        if k not in allowed:
            raise TypeError(f"SmolVM() got an unexpected keyword argument {k!r}")
        if v is None or (k == "ssh_user" and v == "root") or (k == "backend" and v == "auto"):
            continue
        raise ValidationError(
            f"{k}={v!r} is not supported: smolvm's server decides the state directory, backend "
            "and guest access (set SMOLVM_HOME / SMOLVM_ACCEL for the server instead)",
            {"field": k},
        )


__all__ = ["SmolVM", "list_snapshots", "get_snapshot", "remove_snapshot"]
