"""Helpers for tests/test_cni.py: a node (netns + private OVS), pod namespaces, and a
runner that invokes `sdn-netpol-cni` exactly as a runtime does (a subprocess, `CNI_*` in
the environment, the conflist entry on stdin), from inside the node namespace like the
lab does (`ip netns exec NODE sdn-netpol-cni`).

Everything is real: kernel namespaces and veths, ovsdb-server + ovs-vswitchd (userspace
datapath, one per netns), Debian's /usr/lib/cni/host-local.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sdn_netpol.cni.netlink import host_ifname
from sdn_netpol.ovs.instance import OvsInstance

CNI_PATH = "/usr/lib/cni"
NETWORK = "sdn-netpol"  # the conflist's name, injected into each plugin config
_counter = itertools.count()

# A one-shot TCP/UDP upper-casing echo and its client, run inside pod namespaces.
SERVER = """
import socket, sys
proto, host = sys.argv[1], sys.argv[2]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind((host, 8080))
if proto == "tcp":
    s.listen()
    c, _ = s.accept()
    c.sendall(c.recv(100).upper())
else:
    data, peer = s.recvfrom(100)
    s.sendto(data.upper(), peer)
"""

CLIENT = """
import socket, sys, time
proto, host = sys.argv[1], sys.argv[2]
for _ in range(100):
    try:
        if proto == "tcp":
            c = socket.create_connection((host, 8080), timeout=3)
            c.sendall(b"hello")
        else:
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.settimeout(0.2)
            c.sendto(b"hello", (host, 8080))
        print(c.recv(100).decode())
        break
    except (ConnectionRefusedError, TimeoutError):
        time.sleep(0.05)
"""


def plugin_cmd() -> list[str]:
    """The console script from `pip install -e .`, or the module if it is not installed."""
    script = Path(sys.executable).parent / "sdn-netpol-cni"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sdn_netpol.cni.plugin"]


def shipped_conflist() -> dict[str, Any]:
    text = resources.files("sdn_netpol").joinpath("data/10-sdn-netpol.conflist").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def plugin_config(db_sock: Path, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """What a runtime hands the plugin for the shipped conflist: the first plugin entry
    with `name` and `cniVersion` injected; the OVSDB socket and dataDir point at the test's
    own instance and tmp dir. `runtimeConfig` is what the runtime adds for capabilities."""
    conflist = shipped_conflist()
    conf: dict[str, Any] = json.loads(json.dumps(conflist["plugins"][0]))
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    conf["ovsdb"] = f"unix:{db_sock}"
    conf["ipam"]["dataDir"] = str(data_dir)
    conf.pop("capabilities", None)  # runtimes strip it and send runtimeConfig instead
    conf.update(overrides)
    return conf


def run_ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_gone(pred: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


@dataclass
class CniRun:
    """One plugin invocation's outcome."""

    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class Node:
    """A node network namespace with its own OVS and `br-int`."""

    name: str
    ovs: OvsInstance
    pods: list[str] = field(default_factory=list)

    # -- pods -----------------------------------------------------------------------

    def new_pod_netns(self) -> str:
        name = f"cnit-{os.getpid()}-{next(_counter)}"
        run_ip("netns", "add", name)
        self.pods.append(name)
        return name

    def delete_pod_netns(self, name: str) -> None:
        run_ip("netns", "del", name, check=False)

    # -- plugin ---------------------------------------------------------------------

    def cni(self, command: str, conf: dict[str, Any] | bytes, container_id: str = "",
            netns: str = "", ifname: str = "eth0", args: str = "",
            env: dict[str, str] | None = None, in_node: bool = True,
            plugin: list[str] | None = None) -> CniRun:
        """Run the plugin like a runtime: env vars + config on stdin, inside the node.
        `plugin`: the command, if not the project's console script."""
        full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        full.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                     "CNI_NETNS": f"/var/run/netns/{netns}" if netns else "",
                     "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": CNI_PATH})
        full.update(env or {})
        full = {k: v for k, v in full.items() if v != "" or not k.startswith("CNI_")}
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        cmd = (["ip", "netns", "exec", self.name] if in_node else []) + (plugin or plugin_cmd())
        start = time.monotonic()
        proc = subprocess.run(cmd, input=stdin, capture_output=True, env=full, timeout=120,
                              check=False)
        return CniRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode(),
                      time.monotonic() - start)

    # -- observations ---------------------------------------------------------------

    def links(self) -> set[str]:
        out = run_ip("-n", self.name, "-o", "link", "show")
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}

    def ports(self) -> set[str]:
        return set(self.ovs.vsctl("list-ports", "br-int").split())

    def iface(self, name: str, column: str) -> str:
        return self.ovs.vsctl("--if-exists", "get", "Interface", name, column).strip()

    def external_ids(self, name: str) -> dict[str, str]:
        out = self.ovs.vsctl("--format=json", "--columns=external_ids", "find", "Interface",
                             f"name={name}")
        rows = json.loads(out)["data"]
        if not rows:
            return {}
        return {k: v for k, v in rows[0][0][1]}


def allocations(data_dir: Path) -> dict[str, str]:
    """host-local's reservations: one file per IP holding `containerid\\nifname`."""
    net = data_dir / NETWORK
    if not net.is_dir():
        return {}
    return {p.name: p.read_text().splitlines()[0] for p in net.iterdir()
            if p.name not in ("lock",) and not p.name.startswith("last_reserved_ip")}


def host_end(container_id: str, ifname: str = "eth0") -> str:
    return host_ifname(container_id, ifname)


@contextlib.contextmanager
def node_with_ovs(rundir: Path, name: str | None = None) -> Any:
    """Node netns + OvsInstance (ovsdb-server, ovs-vswitchd inside it) + br-int; the netns
    is `name`, by default one per process."""
    name = name or f"cnit-{os.getpid()}-node"
    run_ip("netns", "del", name, check=False)
    run_ip("netns", "add", name)
    run_ip("-n", name, "link", "set", "lo", "up")
    ovs = None
    node = None
    try:
        ovs = OvsInstance.start(rundir, netns=name)
        ovs.add_bridge("br-int")
        node = Node(name=name, ovs=ovs)
        yield node
    finally:
        if ovs is not None:
            ovs.stop()
        for pod in node.pods if node else []:
            run_ip("netns", "del", pod, check=False)
        run_ip("netns", "del", name, check=False)
