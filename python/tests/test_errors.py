"""Bad input fails with a clear exception and creates nothing."""

from __future__ import annotations


import pytest

import smolvm
from smolvm import SmolVM, VMConfig


def ids(client: smolvm.Client) -> set:
    return {i.vm_id for i in SmolVM.list(client=client)}


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: VMConfig(vm_id="bad id!"), "vm_id"),
        (lambda: VMConfig(vm_id="-starts-with-dash"), "vm_id"),
        (lambda: VMConfig(vcpu_count=0), "vcpu_count"),
        (lambda: VMConfig(mem_size_mib=-5), "mem_size_mib"),
        (lambda: VMConfig(mem_size_mib="512"), "mem_size_mib"),
        (lambda: VMConfig(mem_size_mib=True), "mem_size_mib"),
        (lambda: VMConfig(env_vars={"A-B": "x"}), "env"),
        (lambda: VMConfig(env_vars={"A": 1}), "env_vars"),
        (lambda: VMConfig(kernel_path="/boot/vmlinuz"), "rootfs_path"),
        (lambda: VMConfig(retain_disk_on_delete="yes"), "retain_disk_on_delete"),
    ],
)
def test_vmconfig_rejects_bad_values(make, field: str) -> None:
    with pytest.raises(smolvm.ValidationError) as e:
        make()
    assert isinstance(e.value, ValueError)
    assert e.value.details["field"] == field


def test_smolvm_argument_rules(client: smolvm.Client) -> None:
    before = ids(client)
    with pytest.raises(ValueError, match="either config or vm_id"):
        SmolVM(VMConfig(), vm_id="x", client=client)
    with pytest.raises(ValueError, match="auto-config"):
        SmolVM(VMConfig(), mem_size_mib=512, client=client)
    with pytest.raises(ValueError, match="auto-config"):
        SmolVM(vm_id="x", disk_size_mib=512, client=client)
    with pytest.raises(smolvm.ValidationError):
        SmolVM(mem_size_mib=0, client=client)
    with pytest.raises(smolvm.ValidationError):
        SmolVM("not a config", client=client)  # type: ignore[arg-type]
    with pytest.raises(smolvm.ValidationError, match="data_dir"):
        SmolVM(data_dir="/tmp/elsewhere", client=client)
    with pytest.raises(TypeError):
        SmolVM(no_such_argument=1, client=client)
    assert ids(client) == before


@pytest.mark.parametrize(
    "cfg, field_hint",
    [
        (lambda: VMConfig(mem_size_mib=64), "memory"),          # below the minimum
        (lambda: VMConfig(mem_size_mib=10 ** 8), "memory"),     # more than the host has
        (lambda: VMConfig(vcpu_count=4096), "vcpus"),
        (lambda: VMConfig(disk_size_mib=16), "disk"),
        (lambda: VMConfig(kernel_path="/nonexistent/vmlinuz", rootfs_path="/nonexistent/rootfs.ext4"), "kernel"),
        (lambda: VMConfig(image="no-such-image"), "image"),
    ],
)
def test_server_side_validation_creates_nothing(client: smolvm.Client, cfg, field_hint: str) -> None:
    before = ids(client)
    config = cfg()
    with pytest.raises(smolvm.SmolVMError) as e:
        SmolVM(config, client=client)
    err = e.value
    assert err.code in ("invalid", "not_found"), (err.code, err.message)
    assert err.message
    assert field_hint in (err.message + str(err.details)).lower()
    assert ids(client) == before
    assert not (client.home / "vms" / str(config.vm_id)).exists()


def test_not_found(client: smolvm.Client) -> None:
    with pytest.raises(smolvm.VMNotFoundError) as e:
        SmolVM.from_id("no-such-vm", client=client)
    assert e.value.vm_id == "no-such-vm" and e.value.code == "not_found" and e.value.status == 404
    assert isinstance(e.value, smolvm.SmolVMError)
    with pytest.raises(smolvm.ValidationError):
        SmolVM.from_id("../../etc", client=client)


def test_exceptions_module_matches_reference_names() -> None:
    from smolvm.exceptions import OperationTimeoutError, SmolVMError

    e = OperationTimeoutError("boot", 30.0)
    assert isinstance(e, SmolVMError)
    assert e.message == "Operation 'boot' timed out after 30.0s"
    assert e.details == {"operation": "boot", "timeout_seconds": 30.0}
    assert SmolVMError("m", {"k": 1}).details == {"k": 1}
