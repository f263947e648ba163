"""smolvm: SSH-ready Linux microVMs from Python, with the Python SmolVM's API.

The client drives a local ``smolvm serve`` over its UNIX socket (starting
one when none answers); see :class:`SmolVM`.

::

    from smolvm import SmolVM

    with SmolVM() as vm:
        result = vm.run("echo hello")
        print(result.output, result.exit_code)
"""

from smolvm._client import Client, default_home
from smolvm.build import SSH_BOOT_ARGS, Image, ImageBuilder
from smolvm.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    CommandExecutionUnavailableError,
    GuestFileNotFoundError,
    HostError,
    ImageError,
    NotFoundError,
    OperationTimeoutError,
    PayloadTooLargeError,
    ResourceInUseError,
    ServerUnavailableError,
    SmolVMError,
    SnapshotAlreadyExistsError,
    SnapshotNotFoundError,
    ValidationError,
    VMAlreadyExistsError,
    VMNotFoundError,
    VMNotRunningError,
)
from smolvm.facade import SmolVM, get_snapshot, list_snapshots, remove_snapshot
from smolvm.types import (
    CommandResult,
    NetworkConfig,
    PortForward,
    SnapshotInfo,
    VMConfig,
    VMInfo,
    VMState,
)

__version__ = "0.1.0"

__all__ = [
    "SmolVM",
    "Client",
    "default_home",
    "ImageBuilder",
    "Image",
    "SSH_BOOT_ARGS",
    "VMConfig",
    "VMInfo",
    "VMState",
    "NetworkConfig",
    "CommandResult",
    "SnapshotInfo",
    "PortForward",
    "list_snapshots",
    "get_snapshot",
    "remove_snapshot",
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
