"""A private OVS for a test module: its own network namespace, because one userspace
ovs-vswitchd per namespace is all that works (LAB-NOTES), and a second test run on the same
machine must start its own OVS rather than share the root namespace's."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from sdn_netpol.ovs import OvsInstance


@contextlib.contextmanager
def own_netns(prefix: str) -> Iterator[str]:
    """A network namespace of this test process, removed afterwards."""
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def private_ovs(rundir: Path, prefix: str, bridge: str | None = None) -> Iterator[OvsInstance]:
    """ovsdb-server and ovs-vswitchd in a netns of their own, with `bridge` if given."""
    with own_netns(prefix) as netns, OvsInstance.start(rundir, netns=netns) as inst:
        if bridge is not None:
            inst.add_bridge(bridge)
        yield inst


def add_internal_ports(inst: OvsInstance, bridge: str, ofports: Iterable[int]) -> None:
    """An internal port p<N> at each OpenFlow port number N: packets can be traced from it."""
    for ofport in ofports:
        inst.vsctl("--", "add-port", bridge, f"p{ofport}", "--", "set", "Interface", f"p{ofport}",
                   "type=internal", f"ofport_request={ofport}")
