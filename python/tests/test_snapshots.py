"""Snapshots, clones from them, forks, pause and logs, on real VMs."""

from __future__ import annotations

import pytest

import smolvm
from smolvm import SmolVM, VMState


def test_snapshot_clone_and_remove(client: smolvm.Client, vm: SmolVM) -> None:
    vm.run("echo captured > /root/state; nohup sleep 1000 >/dev/null 2>&1 &")
    snap = vm.snapshot("py-snap")
    try:
        assert snap.name == "py-snap" and snap.snapshot_id == "py-snap"
        assert snap.source_vm == vm.vm_id and not snap.disk_only
        assert "py-snap" in {s.name for s in smolvm.list_snapshots(client=client)}
        assert smolvm.get_snapshot("py-snap", client=client).source_vm == vm.vm_id
        with pytest.raises(smolvm.SnapshotAlreadyExistsError):
            vm.snapshot("py-snap")
        assert vm.refresh().status == VMState.RUNNING  # paused only for the capture
        with SmolVM.from_snapshot("py-snap", client=client) as clone:
            assert clone.status == VMState.RUNNING
            assert clone.vm_id != vm.vm_id and clone.info.from_snapshot == "py-snap"
            assert clone.get_ip() != vm.get_ip()
            r = clone.run("cat /root/state; pgrep -x sleep >/dev/null && echo proc; hostname")
            assert r.stdout.split() == ["captured", "proc", clone.vm_id]
            with pytest.raises(smolvm.ResourceInUseError):
                smolvm.remove_snapshot("py-snap", client=client)
            clone_id = clone.vm_id
        assert clone_id not in {i.vm_id for i in SmolVM.list(client=client)}
    finally:
        smolvm.remove_snapshot("py-snap", client=client)
    with pytest.raises(smolvm.SnapshotNotFoundError) as e:
        smolvm.get_snapshot("py-snap", client=client)
    assert e.value.snapshot_id == "py-snap"
    with pytest.raises(smolvm.SnapshotNotFoundError):
        SmolVM.from_snapshot("py-snap", client=client)
    with pytest.raises(smolvm.ValidationError):
        vm.snapshot("../bad")


def test_fork(client: smolvm.Client, vm: SmolVM) -> None:
    vm.run("echo parent > /root/forked")
    children = vm.fork(1)
    try:
        assert len(children) == 1
        child = children[0]
        assert child.status == VMState.RUNNING and child.vm_id != vm.vm_id
        assert child.run("cat /root/forked").output == "parent"
        child.run("echo child > /root/forked")
        assert vm.run("cat /root/forked").output == "parent"
    finally:
        for c in children:
            c.delete()
    with pytest.raises(smolvm.ValidationError):
        vm.fork(0)


def test_pause_resume_and_logs(vm: SmolVM) -> None:
    assert vm.pause().status == VMState.PAUSED
    assert vm.resume().status == VMState.RUNNING
    assert vm.run("echo back").output == "back"
    vm.run("echo py-console-mark > /dev/console")
    assert "py-console-mark" in vm.logs()
    assert "py-console-mark" in vm.logs(tail=5)
