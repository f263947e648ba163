"""The HTTP client for ``smolvm serve`` (docs/api.md), standard library only.

One :class:`Client` talks to one server: over the UNIX socket
``$SMOLVM_HOME/smolvm.sock`` by default, or the server ``SMOLVM_HOST``
names (``unix:///path.sock``, ``tcp://127.0.0.1:PORT`` with the bearer token
in ``SMOLVM_TOKEN``). Connections are kept alive and reused, so a command
round trip costs one request on an open socket.

When nothing answers on the default socket, the client starts
``smolvm serve --idle-timeout 30s`` itself (the ``smolvm`` on ``PATH``, or
``$SMOLVM_BIN``), detached in its own session with its output in
``$SMOLVM_HOME/serve.log``; the server exits once no client has had a
connection open for the idle timeout. A lock file serialises the start
across processes, and the server itself refuses a second instance on a live
socket, so concurrent clients never run two.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from smolvm import exceptions as exc

logger = logging.getLogger("smolvm")

API_PREFIX = "/v1"
SOCKET_FILE = "smolvm.sock"
TOKEN_FILE = "serve.token"
DEFAULT_IDLE_TIMEOUT = "30s"
# How long the client waits on a silent server when the call has no timeout
# of its own. It is a socket timeout: it bounds silence, not a whole
# (streamed) transfer.
DEFAULT_REQUEST_TIMEOUT = 300.0
# How long a server this client started may take to answer its first
# health check (it opens its state database and socket; no VM boots).
SERVER_START_TIMEOUT = 30.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# Errors of a kept-alive connection the server closed under us.
_STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
          http.client.BadStatusLine, ConnectionAbortedError)


def default_home() -> Path:
    """``$SMOLVM_HOME``, as the Go SDK's ``smolvm.DefaultHome`` resolves it."""
    h = os.environ.get("SMOLVM_HOME")
    if h:
        return Path(h)
    x = os.environ.get("XDG_STATE_HOME")
    if x:
        return Path(x) / "smolvm"
    try:
        return Path.home() / ".local" / "state" / "smolvm"
    except (KeyError, RuntimeError):
        return Path(os.environ.get("TMPDIR", "/tmp")) / "smolvm"


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a UNIX socket.

    With ``check_owner`` (the default socket, which the client may also
    start a server on) a socket that another user owns is refused: whoever
    owns it would see every request, so it must be ours (or root's, when we
    are root), as ssh-agent sockets are checked.
    """

    def __init__(self, path: str, timeout: Optional[float], check_owner: bool = False) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=1 << 16)
        self._path = path
        self._check_owner = check_owner

    def connect(self) -> None:
        if self._check_owner:
            try:
                owner = os.stat(self._path).st_uid
            except FileNotFoundError:
                raise
            if owner != os.getuid():
                raise PermissionError(errno.EPERM, f"{self._path} belongs to uid {owner}, not to you "
                                      f"(uid {os.getuid()}): refusing to talk to another user's server")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class Response:
    """A streamed response. Read it whole, or close it; ``with`` does the latter.

    A connection whose response was read to the end goes back to the pool.
    """

    def __init__(self, client: "Client", conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        self._client, self._conn, self._resp = client, conn, resp
        self.status = resp.status
        self.headers = resp.headers
        self._done = False

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all with -1); b"" at the end."""
        data = self._resp.read() if n is None or n < 0 else self._resp.read(n)
        if (n is None or n < 0 or not data) and not self._done:
            self.close()
        return data

    def readline(self) -> bytes:
        line = self._resp.readline()
        if not line:
            self.close()
        return line

    def iter_lines(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._resp.isclosed() and not self._resp.will_close:
            self._client._put(self._conn)
        else:
            self._resp.close()
            self._conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *a: object) -> None:
        self.close()


def _parse_host(host: str) -> Tuple[str, str]:
    """Split a ``SMOLVM_HOST`` value into ("unix", path) or ("tcp", "host:port")."""
    u = urllib.parse.urlsplit(host)
    if u.scheme == "unix":
        path = u.path or u.netloc
        if not path:
            raise exc.ValidationError(f"host {host!r} names no socket: use unix:///path/to/smolvm.sock",
                                      {"field": "host"})
        return "unix", path
    if u.scheme in ("tcp", "http"):
        if not u.hostname or not u.port:
            raise exc.ValidationError(f"host {host!r} needs an address and port: tcp://127.0.0.1:PORT",
                                      {"field": "host"})
        return "tcp", u.netloc
    raise exc.ValidationError(
        f"host {host!r} is not understood: use unix:///path/to/smolvm.sock or tcp://HOST:PORT",
        {"field": "host"},
    )


class Client:
    """A connection pool to one ``smolvm serve``; safe to share between threads.

    Args:
        host: ``unix:///path.sock`` or ``tcp://HOST:PORT``; default
            ``$SMOLVM_HOST``, else the UNIX socket in ``home``.
        token: Bearer token for TCP; default ``$SMOLVM_TOKEN``, else (for a
            loopback server) ``$SMOLVM_HOME/serve.token`` if readable.
        home: The state directory; default as the Go SDK (``$SMOLVM_HOME``,
            ``~/.local/state/smolvm``).
        autostart: Start ``smolvm serve`` when nothing answers. Default: only
            when using the default socket (no ``host``, no ``SMOLVM_HOST``).
        smolvm_bin: The ``smolvm`` binary to start; default ``$SMOLVM_BIN``,
            else ``smolvm`` on ``PATH``.
        idle_timeout: ``--idle-timeout`` of a server this client starts.
    """

    def __init__(
        self,
        host: Optional[str] = None,
        token: Optional[str] = None,
        *,
        home: Optional[Union[str, "os.PathLike[str]"]] = None,
        autostart: Optional[bool] = None,
        smolvm_bin: Optional[str] = None,
        idle_timeout: str = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.home = Path(home) if home is not None else default_home()
        env_host = os.environ.get("SMOLVM_HOST") or None
        explicit = host or env_host
        self.host = explicit or f"unix://{self.home / SOCKET_FILE}"
        self._default_socket = explicit is None
        self._kind, self._addr = _parse_host(self.host)
        self.autostart = (explicit is None) if autostart is None else bool(autostart)
        self._bin = smolvm_bin
        self.idle_timeout = idle_timeout
        self._token = token or os.environ.get("SMOLVM_TOKEN") or None
        if self._kind == "tcp" and self._token is None:
            self._token = self._token_from_file()
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        #: The server process this client started, if any.
        self.started_server: Optional[subprocess.Popen] = None

    def __repr__(self) -> str:
        return f"Client({self.host!r})"

    # -- connections ---------------------------------------------------

    def _token_from_file(self) -> Optional[str]:
        hostname = urllib.parse.urlsplit("//" + self._addr).hostname or ""
        if hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        try:
            return (self.home / TOKEN_FILE).read_text().strip() or None
        except OSError:
            return None

    def _new_conn(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        if self._kind == "unix":
            return _UnixConnection(self._addr, timeout, check_owner=self._default_socket)
        h = urllib.parse.urlsplit("//" + self._addr)
        return http.client.HTTPConnection(h.hostname or "", h.port, timeout=timeout, blocksize=1 << 16)

    def _get(self) -> Optional[http.client.HTTPConnection]:
        """An idle kept-alive connection the server has not closed, if any."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            sock = conn.sock
            if sock is None:
                continue
            try:
                # Readable while idle = EOF (the server closed it) or junk.
                r, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                r = [sock]
            if r:
                conn.close()
                continue
            return conn

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection (the client stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def _connect(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        conn = self._new_conn(timeout)
        try:
            conn.connect()
            return conn
        except (FileNotFoundError, ConnectionRefusedError) as e:
            conn.close()
            if not self.autostart:
                raise exc.ServerUnavailableError(
                    f"no smolvm server answers at {self.host} ({e.strerror or e}); start one with "
                    "`smolvm serve`, or unset SMOLVM_HOST to let the client start its own",
                    {"host": self.host},
                ) from e
        except OSError as e:
            conn.close()
            raise exc.ServerUnavailableError(f"cannot reach the smolvm server at {self.host}: {e}",
                                             {"host": self.host}) from e
        self.ensure_server()
        conn = self._new_conn(timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise exc.ServerUnavailableError(f"the smolvm server at {self.host} went away: {e}",
                                             {"host": self.host}) from e
        return conn

    # -- starting a server ---------------------------------------------

    def ping(self, timeout: float = 2.0) -> Optional[Dict[str, Any]]:
        """The server's ``Health``, or ``None`` when nothing answers."""
        conn = self._new_conn(timeout)
        try:
            conn.request("GET", API_PREFIX + "/health", headers=self._headers({}))
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def _smolvm_bin(self) -> str:
        name = self._bin or os.environ.get("SMOLVM_BIN") or "smolvm"
        found = shutil.which(name) if os.sep not in name else (name if os.access(name, os.X_OK) else None)
        if not found:
            raise exc.ServerUnavailableError(
                f"no smolvm server answers at {self.host}, and the smolvm binary to start one "
                f"({name!r}) was not found: install smolvm on PATH or set SMOLVM_BIN to it",
                {"host": self.host},
            )
        return found

    def ensure_server(self) -> Dict[str, Any]:
        """Return the server's health, starting ``smolvm serve`` if none answers."""
        health = self.ping()
        if health is not None:
            return health
        if self._kind != "unix":
            raise exc.ServerUnavailableError(f"no smolvm server answers at {self.host}", {"host": self.host})
        with self._start_lock:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(self.home / "serve.start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # One starter per home across processes; the others wait and
                # then find the server it started.
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                health = self.ping()
                if health is not None:
                    return health
                return self._start_server()
            finally:
                os.close(lock_fd)

    def _start_server(self) -> Dict[str, Any]:
        binary = self._smolvm_bin()
        log_path = self.home / "serve.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        env = dict(os.environ)
        env["SMOLVM_HOME"] = str(self.home)
        env.pop("SMOLVM_HOST", None)
        argv = [binary, "serve", "--idle-timeout", self.idle_timeout]
        if self._addr != str(self.home / SOCKET_FILE):
            argv += ["--socket", self._addr]
        logger.info("starting %s (log: %s)", " ".join(argv), log_path)
        try:
            start = os.fstat(log_fd).st_size
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                    env=env, start_new_session=True, close_fds=True)
        except OSError as e:
            raise exc.ServerUnavailableError(f"cannot start {binary} serve: {e}", {"host": self.host}) from e
        finally:
            os.close(log_fd)
        # Reap it when it exits (idle timeout), so it leaves no zombie.
        threading.Thread(target=proc.wait, name="smolvm-serve-reaper", daemon=True).start()
        self.started_server = proc
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            health = self.ping(timeout=1.0)
            if health is not None:
                return health
            if proc.poll() is not None:
                # Lost a race with a server started elsewhere, or failed.
                health = self.ping(timeout=1.0)
                if health is not None:
                    return health
                raise exc.ServerUnavailableError(
                    f"{binary} serve exited with status {proc.returncode} before answering: "
                    f"{_tail(log_path, start)}",
                    {"host": self.host, "log": str(log_path)},
                )
            time.sleep(0.01)
        raise exc.ServerUnavailableError(
            f"{binary} serve did not answer at {self.host} within {SERVER_START_TIMEOUT:.0f}s: "
            f"{_tail(log_path, start)}",
            {"host": self.host, "log": str(log_path)},
        )

    # -- requests ------------------------------------------------------

    def _headers(self, extra: Mapping[str, str]) -> Dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "smolvm-python"}
        if self._token and self._kind == "tcp":
            h["Authorization"] = f"Bearer {self._token}"
        h.update(extra)
        return h

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        json_body: Any = None,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        ctx: Optional["ErrorContext"] = None,
    ) -> Response:
        """Send a request and return the streamed response; raise on an error status."""
        url = API_PREFIX + path if not path.startswith("/openapi") else path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs = self._headers(hdrs)
        replayable = body is None or isinstance(body, (bytes, bytearray))
        ctx = ctx or ErrorContext(method.lower())
        for attempt in (0, 1):
            conn = self._get()
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(timeout)
                elif conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(method, url, body=body, headers=hdrs)
                resp = conn.getresponse()
            except _STALE as e:
                if conn is not None:
                    conn.close()
                if reused and attempt == 0 and replayable and method in _IDEMPOTENT:
                    continue
                raise exc.SmolVMError(f"{method} {path}: the server closed the connection: {e}",
                                      {"host": self.host}) from e
            except socket.timeout as e:
                if conn is not None:
                    conn.close()
                raise exc.OperationTimeoutError(ctx.op, timeout or 0.0,
                                                message=f"{ctx.op}: no answer from the server within {timeout}s") from e
            except OSError as e:
                if conn is not None:
                    conn.close()
                raise exc.ServerUnavailableError(f"{method} {path}: {e}", {"host": self.host}) from e
            r = Response(self, conn, resp)
            if resp.status >= 400:
                try:
                    data = r.read()
                except (OSError, http.client.HTTPException):
                    data = b""
                raise error_from_response(resp.status, data, ctx)
            return r
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """Send a request and return its JSON body (``None`` for 204)."""
        timeout = kw.get("timeout", DEFAULT_REQUEST_TIMEOUT)
        ctx = kw.get("ctx") or ErrorContext(method.lower())
        r = self.open(method, path, **kw)
        try:
            data = r.read()
        except socket.timeout as e:
            r.close()
            raise exc.OperationTimeoutError(ctx.op, timeout or 0.0) from e
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise exc.SmolVMError(f"{method} {path}: the server sent invalid JSON: {data[:200]!r}") from e


class ErrorContext:
    """What a request was about, to turn an API error into the right exception."""

    def __init__(self, op: str, *, vm_id: Optional[str] = None, snapshot: Optional[str] = None,
                 image: Optional[str] = None, guest_path: Optional[str] = None,
                 timeout: Optional[float] = None) -> None:
        self.op, self.vm_id, self.snapshot, self.image = op, vm_id, snapshot, image
        self.guest_path, self.timeout = guest_path, timeout


def error_from_detail(status: int, detail: Mapping[str, Any], ctx: ErrorContext) -> exc.SmolVMError:
    """Map an API ``ErrorDetail`` to the client's exception for it."""
    code = str(detail.get("code") or "internal")
    message = str(detail.get("message") or f"HTTP {status}")
    details: Dict[str, Any] = {}
    if detail.get("field"):
        details["field"] = detail["field"]
    kw: Dict[str, Any] = {"code": code, "status": status}
    if code == "invalid":
        return exc.ValidationError(message, details, **kw)
    if code == "timeout":
        return exc.OperationTimeoutError(ctx.op, ctx.timeout or 0.0, message=message, details=details, **kw)
    if code == "not_found":
        if ctx.guest_path is not None:
            e: exc.SmolVMError = exc.GuestFileNotFoundError(message, {"path": ctx.guest_path}, **kw)
        elif ctx.snapshot is not None:
            e = exc.SnapshotNotFoundError(ctx.snapshot, message, **kw)
        elif ctx.vm_id is not None:
            e = exc.VMNotFoundError(ctx.vm_id, message, **kw)
        elif ctx.image is not None:
            e = exc.ImageError(message, {"image": ctx.image}, **kw)
        else:
            e = exc.NotFoundError(message, details, **kw)
        return e
    if code == "already_exists":
        if ctx.snapshot is not None:
            return exc.SnapshotAlreadyExistsError(ctx.snapshot, message, **kw)
        if ctx.vm_id is not None:
            return exc.VMAlreadyExistsError(ctx.vm_id, message, **kw)
        return exc.AlreadyExistsError(message, details, **kw)
    if code == "not_running":
        return exc.VMNotRunningError(message, {"vm_id": ctx.vm_id, **details}, **kw)
    if code == "in_use":
        return exc.ResourceInUseError(message, details, **kw)
    if code == "too_large":
        return exc.PayloadTooLargeError(message, details, **kw)
    if code == "unauthorized":
        return exc.AuthenticationError(message + " (set SMOLVM_TOKEN to the server's token)", details, **kw)
    if ctx.image is not None:
        return exc.ImageError(message, details, **kw)
    return exc.SmolVMError(message, details, **kw)


def error_from_response(status: int, data: bytes, ctx: ErrorContext) -> exc.SmolVMError:
    """Map an error response (``{"error": {...}}``) to an exception."""
    detail: Mapping[str, Any] = {}
    try:
        parsed = json.loads(data)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = parsed["error"]
    except ValueError:
        pass
    if not detail:
        code = {400: "invalid", 401: "unauthorized", 404: "not_found", 409: "already_exists",
                413: "too_large", 504: "timeout"}.get(status, "internal")
        text = data.decode("utf-8", "replace").strip()[:500]
        detail = {"code": code, "message": f"{ctx.op}: HTTP {status}: {text}" if text else f"{ctx.op}: HTTP {status}"}
    return error_from_detail(status, detail, ctx)


def _tail(path: Path, start: int, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").strip()
    return (text[-limit:] if text else "(nothing in the log)") + f" [log: {path}]"


def quote(segment: str) -> str:
    """Quote one path segment (a VM id, a snapshot name)."""
    return urllib.parse.quote(segment, safe="")


__all__ = ["Client", "Response", "ErrorContext", "default_home", "quote"]
