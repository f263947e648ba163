"""SmolVM's lifecycle against real VMs: create, start, stop, delete, reconnect, scopes."""

from __future__ import annotations

import time

import pytest

import smolvm
from smolvm import SmolVM, VMConfig, VMState


def ids(client: smolvm.Client) -> set:
    return {i.vm_id for i in SmolVM.list(client=client)}


def test_auto_config_lifecycle(client: smolvm.Client) -> None:
    vm = SmolVM(mem_size_mib=256, disk_size_mib=600, client=client)
    try:
        assert vm.status == VMState.CREATED
        assert vm.vm_id.startswith("vm-")
        assert vm.info.config.mem_size_mib == 256
        assert vm.start(boot_timeout=60) is vm
        assert vm.status == VMState.RUNNING
        assert vm.start() is vm  # no-op on a running VM
        assert vm.can_run_commands()
        ip = vm.get_ip()
        assert ip.count(".") == 3
        assert vm.info.network is not None and vm.info.network.guest_ip == ip
        assert vm.data_dir.is_dir()  # the server runs on this host
        r = vm.run("free -m | awk '/Mem:/{print $2}'; df -m / | awk 'NR==2{print $2}'")
        mem, disk = (int(x) for x in r.output.split())
        assert 150 < mem <= 256, r.output
        assert 500 < disk <= 600, r.output
        assert vm.stop(timeout=5) is vm
        assert vm.status == VMState.STOPPED
        with pytest.raises(smolvm.SmolVMError) as e:
            vm.run("true")
        assert isinstance(e.value, smolvm.VMNotRunningError)
        assert "stopped" in e.value.message
        vm.start()
        assert vm.run("echo again").output == "again"
    finally:
        vm.delete()
    assert vm.status == VMState.DELETED
    assert not vm.can_run_commands()
    with pytest.raises(smolvm.VMNotFoundError):
        SmolVM.from_id(vm.vm_id, client=client)
    assert vm.vm_id not in ids(client)


def test_context_manager_owned_vm_is_deleted(client: smolvm.Client) -> None:
    with SmolVM(client=client) as vm:
        assert vm.status == VMState.RUNNING  # started on entry
        assert vm.run("echo hi").output == "hi"
        vm_id = vm.vm_id
    assert vm_id not in ids(client)
    with pytest.raises(smolvm.VMNotFoundError):
        SmolVM.from_id(vm_id, client=client)


def test_context_manager_deletes_on_exception(client: smolvm.Client) -> None:
    with pytest.raises(RuntimeError):
        with SmolVM(client=client) as vm:
            vm_id = vm.vm_id
            raise RuntimeError("boom")
    assert vm_id not in ids(client)


def test_context_manager_reconnected_vm_is_only_stopped(client: smolvm.Client) -> None:
    owner = SmolVM(client=client).start()
    try:
        with SmolVM.from_id(owner.vm_id, client=client) as again:
            assert again.status == VMState.RUNNING  # from_id does not start or stop
            assert again.run("hostname").output == owner.vm_id
        assert again.status == VMState.STOPPED
        assert owner.refresh().status == VMState.STOPPED
        assert owner.vm_id in ids(client)
        # A reconnected VM that is stopped is not started on entry.
        with SmolVM(vm_id=owner.vm_id, client=client) as third:
            assert third.status == VMState.STOPPED
        assert owner.vm_id in ids(client)
    finally:
        owner.delete()


def test_from_id_in_another_process(client: smolvm.Client, vm: SmolVM) -> None:
    from conftest import run_python

    p = run_python(
        "import smolvm\n"
        f"v = smolvm.SmolVM.from_id({vm.vm_id!r})\n"
        "print(v.status.value, v.run('echo $((6*7))').output)\n"
        "v.close()\n",
        {},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["running", "42"]
    assert vm.refresh().status == VMState.RUNNING  # close() leaves the VM alone


def test_vmconfig_with_env_and_id(client: smolvm.Client) -> None:
    cfg = VMConfig(vm_id="py-cfg", vcpu_count=1, mem_size_mib=256, env_vars={"APP_MODE": "production"})
    with SmolVM(cfg, client=client) as vm:
        assert vm.vm_id == "py-cfg"
        assert vm.run("echo $APP_MODE").output == "production"
        assert vm.list_env_vars() == {"APP_MODE": "production"}
        assert vm.info.config.env_vars == {"APP_MODE": "production"}
    assert "py-cfg" not in ids(client)


def test_duplicate_id_is_already_exists(client: smolvm.Client, vm: SmolVM) -> None:
    before = ids(client)
    with pytest.raises(smolvm.VMAlreadyExistsError) as e:
        SmolVM(VMConfig(vm_id=vm.vm_id), client=client)
    assert e.value.code == "already_exists" and e.value.status == 409
    assert ids(client) == before


def test_refresh_sees_changes_made_elsewhere(client: smolvm.Client, vm: SmolVM) -> None:
    other = SmolVM.from_id(vm.vm_id, client=client)
    other.pause()
    try:
        assert vm.status == VMState.RUNNING  # cached
        assert vm.refresh().status == VMState.PAUSED
    finally:
        other.resume()
    assert vm.refresh().status == VMState.RUNNING
    assert vm.run("true").ok


def test_close_keeps_handle_usable(client: smolvm.Client, vm: SmolVM) -> None:
    h = SmolVM.from_id(vm.vm_id)  # its own client
    h.close()
    assert h.run("echo ok").output == "ok"  # reconnects
    h.close()


def test_list_filters(client: smolvm.Client, vm: SmolVM) -> None:
    running = SmolVM.list(state=VMState.RUNNING, client=client)
    assert vm.vm_id in {i.vm_id for i in running}
    assert all(i.status == VMState.RUNNING for i in running)
    assert vm.vm_id not in {i.vm_id for i in SmolVM.list(state="stopped", client=client)}


def test_start_timeout(client: smolvm.Client) -> None:
    # A cold boot takes seconds under TCG; a 1 s budget cannot be met (and is past QMP setup: a budget that ends inside it comes back as an internal error, see the report),
    # and a failed start leaves the VM stopped (not half-started).
    vm = SmolVM(VMConfig(mem_size_mib=200), client=client)
    try:
        t0 = time.monotonic()
        with pytest.raises(smolvm.OperationTimeoutError) as e:
            vm.start(boot_timeout=1.0)
        assert time.monotonic() - t0 < 20
        assert e.value.message and e.value.code == "timeout"
        assert vm.refresh().status != VMState.RUNNING
        vm.start(boot_timeout=60)
        assert vm.run("true").ok
    finally:
        vm.delete()


def test_retain_disk_on_delete_reuses_the_disk(client: smolvm.Client, home) -> None:
    import subprocess

    from conftest import smolvm_bin

    cfg = VMConfig(vm_id="py-keep", mem_size_mib=256, retain_disk_on_delete=True)
    try:
        with SmolVM(cfg, client=client) as vm:
            vm.run("echo kept-state > /root/state && sync")
        assert "py-keep" not in ids(client)
        assert any((home / "vms" / "py-keep").iterdir())  # the disk stayed
        # Without retain_disk_on_delete the kept disk blocks the id ...
        with pytest.raises(smolvm.VMAlreadyExistsError):
            SmolVM(VMConfig(vm_id="py-keep"), client=client)
        # ... with it, as in the Python SmolVM, a new VM boots the old disk.
        with SmolVM(cfg, client=client) as vm:
            assert vm.run("cat /root/state").output == "kept-state"
    finally:
        for info in SmolVM.list(client=client):
            if info.vm_id == "py-keep":
                client.call("DELETE", "/vms/py-keep")
        # The API has no route to drop a kept disk; the CLI does it.
        subprocess.run([smolvm_bin(), "delete", "--disk", "py-keep"], capture_output=True)
    assert not (home / "vms" / "py-keep").exists()


def test_failed_start_in_with_leaves_nothing(client: smolvm.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # __exit__ never runs when __enter__ raises, so a VM the handle made
    # and could not start must be deleted by __enter__ itself. Start fails
    # for real only with inputs the server reports at random points (see
    # the report), so the failure is injected after a real start: the VM
    # exists and runs when start "times out", and the server must end up
    # without it.
    real_start = SmolVM.start

    def start_then_time_out(self: SmolVM, boot_timeout: float = 30.0) -> SmolVM:
        real_start(self, boot_timeout)
        raise smolvm.OperationTimeoutError("start", boot_timeout)

    monkeypatch.setattr(SmolVM, "start", start_then_time_out)
    before = ids(client)
    vm = SmolVM(client=client)
    with pytest.raises(smolvm.OperationTimeoutError):
        with vm:
            pytest.fail("the block must not run")
    assert ids(client) == before
    assert vm.status == VMState.DELETED
