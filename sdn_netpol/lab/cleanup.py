"""Tear a lab down completely, whether it stopped cleanly or crashed half-way.

Finds leftovers three ways, so a lost or stale state file does not matter: the state file
(pids, rundirs), argv markers carrying the workdir (servers, controllers, OVS daemons),
and the name prefix of every namespace. Order matters: processes first (a namespace with
a process inside lives on), then OVS daemons, then namespaces.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sdn_netpol.lab import hostlimits, netns, procs
from sdn_netpol.lab.state import LabState, lab_prefix
from sdn_netpol.ovs.instance import OvsInstance, daemon_pids, terminate

LAB_DIRS = ("manifests", "nodes", "pods")
LAB_FILES = ("state.json", ".state.json.tmp")


def markers(workdir: Path) -> list[str]:
    root = Path(workdir).resolve()
    return [f"--lab={root}", f"dir:{root}/manifests", f"--pidfile={root}/"]


def leftovers(workdir: Path) -> dict[str, list[str]]:
    """What of a lab still exists: namespaces (by prefix) and processes (by marker)."""
    root = Path(workdir).resolve()
    pids = procs.find_marked(markers(root))
    return {
        "netns": netns.list_netns(lab_prefix(root)),
        "processes": [f"{pid} {' '.join(procs.cmdline(pid))[:100]}" for pid in pids],
    }


def teardown(workdir: Path, keep_files: bool = False) -> float:
    """Remove everything of the lab at `workdir`; returns the seconds it took."""
    start = time.monotonic()
    root = Path(workdir).resolve()
    state = LabState.load(root)
    _stop_processes(root, state)
    for name in netns.list_netns(lab_prefix(root)):
        netns.remove(name)
    hostlimits.release(root, alive=_has_state)  # the last one out restores
    if not keep_files:
        _remove_files(root)
    return time.monotonic() - start


def _has_state(workdir: Path) -> bool:
    """Another lab still counts while its state file exists; not parsed: it may come from
    another version of this code, or be half-written."""
    return (workdir / LAB_FILES[0]).exists()


def _remove_files(root: Path) -> None:
    """Only what a lab writes: a mistaken `--workdir ~` must not cost anyone their files."""
    for name in LAB_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for name in LAB_FILES:
        (root / name).unlink(missing_ok=True)


def _stop_processes(root: Path, state: LabState | None) -> None:
    """Servers and controllers (by marker), then each node's OVS (by its pidfile argv)."""
    found = procs.find_marked([m for m in markers(root) if not m.startswith("--pidfile")])
    if found:
        terminate(found, timeout=5.0)
    rundirs = {Path(n.rundir) for n in state.nodes} if state else set()
    nodes_dir = root / "nodes"
    if nodes_dir.is_dir():
        rundirs |= {p for p in nodes_dir.iterdir() if p.is_dir()}
    for rundir in rundirs:
        OvsInstance(rundir).stop()
    stray = procs.find_marked([f"--pidfile={root}/"])
    if stray:
        terminate(stray, timeout=5.0)
    for rundir in rundirs:  # belt and braces: nothing may survive a down
        for name in ("ovs-vswitchd", "ovsdb-server"):
            assert not daemon_pids(rundir.resolve(), name), f"{name} of {rundir} survived"
