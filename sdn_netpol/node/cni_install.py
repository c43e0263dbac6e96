"""Installing the CNI plugin and its conflist onto a node, atomically.

The kubelet's runtime runs `/opt/cni/bin/sdn-netpol-cni` on the host, outside any image.
So the plugin is installed as a self-contained zipapp (the plugin's own modules plus its
pure-Python dependencies: pyroute2, ovs, sortedcontainers) run by the host's `python3`.
Both files are written beside their destination and renamed over it: a runtime reading
the directory sees the old file or the new one, never half of one, and the conflist is
written last, so the plugin it names is already in place.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import zipapp
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from netaddr import AddrFormatError, IPNetwork

PLUGIN = "sdn-netpol-cni"
CONFLIST = "10-sdn-netpol.conflist"
NETWORK = "sdn-netpol"
INTERPRETER = "/usr/bin/env python3"
# The plugin's modules and what they import, as top-level packages or modules.
BUNDLED = ("sdn_netpol.cni", "pyroute2", "ovs", "sortedcontainers")
MAIN = "import sys\nfrom sdn_netpol.cni.plugin import main\nsys.exit(main())\n"


class InstallError(Exception):
    """A node that cannot get the plugin: the message names the object and field."""


def parse_pod_cidrs(node: str, raw: Sequence[str], field: str = "spec.podCIDRs") -> list[IPNetwork]:
    if not raw:
        raise InstallError(f"node {node}: spec.podCIDR is empty: give the node a pod CIDR "
                           "(kube-controller-manager --allocate-node-cidrs, kubeadm --pod-network-cidr) "
                           "or pass --pod-cidr")
    cidrs: list[IPNetwork] = []
    for i, value in enumerate(raw):
        try:
            net = IPNetwork(value)
        except (AddrFormatError, ValueError, TypeError):
            raise InstallError(f"node {node}: {field}[{i}]: {value!r} is not a CIDR") from None
        if any(other.version == net.version for other in cidrs):  # Kubernetes allows one per family
            raise InstallError(f"node {node}: {field}[{i}]: {value} is a second IPv{net.version} pod CIDR "
                               "(a dual-stack Node has one IPv4 and one IPv6)")
        cidrs.append(net)
    return cidrs


def conflist(pod_cidrs: Iterable[IPNetwork], bridge: str, ovsdb: str, mtu: int) -> dict[str, Any]:
    """One host-local range set per pod CIDR, so a dual-stack Node (an IPv4 and an IPv6
    podCIDR) gives each pod one address of each family. The gateway is the second-to-last
    address of either family (the flows answer ARP and Neighbor Solicitations for any address
    with the virtual gateway MAC), so the range ends before it."""
    ranges = [[{"subnet": str(net.cidr), "rangeEnd": str(net[-3]), "gateway": str(net[-2])}]
              for net in pod_cidrs]
    plugin = {"type": PLUGIN, "bridge": bridge, "ovsdb": ovsdb, "mtu": mtu,
              "ipam": {"type": "host-local", "ranges": ranges}, "capabilities": {"ips": True}}
    return {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [plugin]}


def _sources(name: str) -> list[tuple[Path, str]]:
    """(file, name inside the archive) of a package or module, without caches."""
    module = importlib.import_module(name)
    origin = Path(str(module.__file__))
    if origin.name != "__init__.py":
        return [(origin, origin.name)]
    top = origin.parent
    root = top.parents[name.count(".")]  # the folder holding the top-level package
    return [(path, path.relative_to(root).as_posix()) for path in sorted(top.rglob("*.py"))
            if "__pycache__" not in path.parts]


def zipapp_bytes() -> bytes:
    """The plugin as one executable file (a zip with a `#!` line)."""
    files = [item for name in BUNDLED for item in _sources(name)]
    package_init = Path(str(importlib.import_module("sdn_netpol").__file__))
    files.append((package_init, "sdn_netpol/__init__.py"))
    staged = io.BytesIO()
    with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in files:
            archive.write(path, arcname)
        archive.writestr("__main__.py", MAIN)
    staged.seek(0)
    out = io.BytesIO()
    zipapp.create_archive(staged, out, interpreter=INTERPRETER)
    return out.getvalue()


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Beside the destination, flushed, then renamed over it (one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temp.chmod(mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def install(bin_dir: Path, conf_dir: Path, conf: dict[str, Any]) -> tuple[Path, Path]:
    """The plugin first, then the conflist naming it; returns both paths."""
    plugin = bin_dir / PLUGIN
    write_atomically(plugin, zipapp_bytes(), 0o755)
    listed = conf_dir / CONFLIST
    write_atomically(listed, (json.dumps(conf, indent=2) + "\n").encode(), 0o644)
    return plugin, listed
