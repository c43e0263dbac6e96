"""The VM substrate's bad input (issue 16): each gets a clear error and leaves nothing.

A missing qemu, an image that fails to build (its log's tail shown), a VM that does not boot
within the deadline (its serial console shown), a node whose `modprobe openvswitch` fails
(the kernel refuses the module: `module_blacklist=openvswitch`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdn_netpol.lab.vm import VmError, VmGroup, ensure_image, group_netns, qemu_pids


def assert_nothing_left(workdir: Path) -> None:
    assert qemu_pids(workdir) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert group_netns(workdir) not in netns
    assert not (workdir / "vms").exists()


def test_a_missing_qemu_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 on it
    with pytest.raises(VmError, match="qemu-system-x86_64 not found: install Debian's qemu-system-x86"):
        ensure_image()
    with pytest.raises(VmError, match="qemu-system-x86_64 not found"):
        VmGroup(tmp_path, ["n1"]).start()
    assert not (tmp_path / "vms").exists()


def test_an_image_that_fails_to_build_shows_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SDN_NETPOL_CACHE", str(tmp_path))
    monkeypatch.setenv("DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # nothing listens there
    with pytest.raises(VmError) as failed:
        ensure_image(timeout=600)
    message = str(failed.value)
    assert "the VM image failed to build" in message and "mmdebstrap failed" in message
    assert "127.0.0.1" in message  # apt's own words from the log's tail
    assert (tmp_path / "vm-image" / "failed-build.log").exists()
    assert list((tmp_path / "vm-image").glob("*.part")) == []  # the half-built tree is gone
    assert not any(p.is_dir() for p in (tmp_path / "vm-image").iterdir())


def test_a_vm_that_does_not_boot_in_time_shows_its_console(tmp_path: Path) -> None:
    with pytest.raises(VmError, match=r"slow did not boot within \d+ s; serial console"):
        VmGroup(tmp_path, ["slow"], underlay=False, boot_timeout=3).start()
    assert_nothing_left(tmp_path)


def test_a_node_whose_modprobe_openvswitch_fails(tmp_path: Path) -> None:
    with pytest.raises(VmError) as failed:
        VmGroup(tmp_path, ["nomod"], underlay=False, kernel_args="module_blacklist=openvswitch").start()
    message = str(failed.value)
    assert message.startswith("nomod: FAILED modprobe openvswitch:"), message
    assert "could not insert 'openvswitch'" in message
    assert "SDN-NETPOL-VM: init nomod" in message  # the serial console's tail comes along
    assert_nothing_left(tmp_path)
