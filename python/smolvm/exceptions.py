"""The exceptions the smolvm client raises.

They follow the Python SmolVM's hierarchy: everything is a
:class:`SmolVMError` (with ``.message`` and ``.details``), a timeout is an
:class:`OperationTimeoutError`, bad input is a :class:`ValidationError`.
Errors that come from the server also carry the API's stable error code
(``.code``, e.g. ``"not_found"``) and HTTP status (``.status``); see
docs/api.md for the list.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class SmolVMError(Exception):
    """Base exception for all smolvm errors.

    Attributes:
        message: What went wrong, for people.
        details: Structured context (``vm_id``, ``field``, ...).
        code: The API error code when the server reported the error
            (``"invalid"``, ``"not_found"``, ...), else ``None``.
        status: The HTTP status that came with ``code``, else ``None``.
    """

    def __init__(
        self,
        message: str,
        details: Optional[Dict[str, Any]] = None,
        *,
        code: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: Dict[str, Any] = dict(details or {})
        self.code = code
        self.status = status


class ValidationError(SmolVMError, ValueError):
    """Bad input: nothing was created or changed.

    It is also a :class:`ValueError`, which is what the Python SmolVM's
    argument checks raise, so ``except ValueError`` keeps working.
    ``details["field"]`` names the offending input when known.
    """


class NotFoundError(SmolVMError):
    """No such VM, snapshot, image or guest file."""


class VMNotFoundError(NotFoundError):
    """No VM with this id exists."""

    def __init__(self, vm_id: str, message: Optional[str] = None, **kw: Any) -> None:
        super().__init__(message or f"VM '{vm_id}' not found", {"vm_id": vm_id}, **kw)
        self.vm_id = vm_id


class SnapshotNotFoundError(NotFoundError):
    """No snapshot of this name exists."""

    def __init__(self, snapshot_id: str, message: Optional[str] = None, **kw: Any) -> None:
        super().__init__(
            message or f"Snapshot '{snapshot_id}' not found", {"snapshot_id": snapshot_id}, **kw
        )
        self.snapshot_id = snapshot_id


class GuestFileNotFoundError(NotFoundError, FileNotFoundError):
    """The guest has no file at the path asked for."""


class AlreadyExistsError(SmolVMError):
    """Something of that name already exists."""


class VMAlreadyExistsError(AlreadyExistsError):
    """A VM with this id already exists (or a kept disk holds the id)."""

    def __init__(self, vm_id: str, message: Optional[str] = None, **kw: Any) -> None:
        super().__init__(message or f"VM '{vm_id}' already exists", {"vm_id": vm_id}, **kw)
        self.vm_id = vm_id


class SnapshotAlreadyExistsError(AlreadyExistsError):
    """A snapshot of this name already exists."""

    def __init__(self, snapshot_id: str, message: Optional[str] = None, **kw: Any) -> None:
        super().__init__(
            message or f"Snapshot '{snapshot_id}' already exists", {"snapshot_id": snapshot_id}, **kw
        )
        self.snapshot_id = snapshot_id


class VMNotRunningError(SmolVMError):
    """The operation needs a running VM (``run`` on a stopped VM, ...)."""


class ResourceInUseError(SmolVMError):
    """The resource is in use, e.g. a snapshot that VMs depend on."""


class PayloadTooLargeError(SmolVMError):
    """A request body or upload is over the server's limit."""


class ImageError(SmolVMError):
    """An image build, lookup or removal failed."""


class HostError(SmolVMError):
    """The host cannot do what was asked (missing tools, no server binary...)."""


class ServerUnavailableError(HostError):
    """No smolvm server answers, and none could be started."""


class AuthenticationError(SmolVMError):
    """The server refused the bearer token (set ``SMOLVM_TOKEN``)."""


class CommandExecutionUnavailableError(SmolVMError):
    """Command execution is not available for this VM."""

    def __init__(self, vm_id: str, reason: str, remediation: Optional[str] = None) -> None:
        message = f"Cannot run command in VM '{vm_id}': {reason}"
        if remediation:
            message = f"{message}\n{remediation}"
        super().__init__(message, {"vm_id": vm_id, "reason": reason})
        self.vm_id = vm_id
        self.reason = reason
        self.remediation = remediation


class OperationTimeoutError(SmolVMError):
    """An operation ran past its timeout (a timed-out command is killed in the guest)."""

    def __init__(
        self,
        operation: str,
        timeout_seconds: float,
        *,
        message: Optional[str] = None,
        details: Optional[Dict[str, Any]] = None,
        code: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        d: Dict[str, Any] = {"operation": operation, "timeout_seconds": timeout_seconds}
        d.update(details or {})
        super().__init__(
            message or f"Operation '{operation}' timed out after {timeout_seconds}s",
            d,
            code=code,
            status=status,
        )
        self.operation = operation
        self.timeout_seconds = timeout_seconds


__all__ = [
    "SmolVMError",
    "ValidationError",
    "NotFoundError",
    "VMNotFoundError",
    "SnapshotNotFoundError",
    "GuestFileNotFoundError",
    "AlreadyExistsError",
    "VMAlreadyExistsError",
    "SnapshotAlreadyExistsError",
    "VMNotRunningError",
    "ResourceInUseError",
    "PayloadTooLargeError",
    "ImageError",
    "HostError",
    "ServerUnavailableError",
    "AuthenticationError",
    "CommandExecutionUnavailableError",
    "OperationTimeoutError",
]
