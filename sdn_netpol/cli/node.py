"""`sdn-netpol node …`: what a node needs before its controller runs (the DaemonSet's init
containers, deploy/daemonset.yaml): the integration bridge, then the CNI plugin and its
conflist on the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click

from sdn_netpol.cli.debugview import fail
from sdn_netpol.node.bridge import TUNNEL_TYPES, BridgeSpec, bridge_args, controller_args
from sdn_netpol.node.cni_install import InstallError, conflist, install, parse_pod_cidrs

OVSDB = click.option("--ovsdb", default="unix:/var/run/openvswitch/db.sock", show_default=True,
                     help="The node's OVSDB (the host's, through a hostPath).")
BRIDGE = click.option("--bridge", default="br-int", show_default=True, help="The integration bridge.")


@click.group()
def node() -> None:
    """Prepare this node: the integration bridge, the CNI plugin on the host."""


def _vsctl(ovsdb: str, *args: str) -> str:
    proc = subprocess.run(["ovs-vsctl", f"--db={ovsdb}", "--timeout=10", *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(f"ovs-vsctl {' '.join(a for a in args if a != '--')[:80]}: {proc.stderr.strip()}")
    return proc.stdout


@node.command("setup")
@OVSDB
@BRIDGE
@click.option("--tunnel", type=click.Choice(TUNNEL_TYPES), default="vxlan", show_default=True)
@click.option("--tunnel-port", default="tun0", show_default=True, help="The tunnel port's name.")
@click.option("--datapath-type", default="", help="Bridge datapath_type: empty for the kernel's, netdev for userspace.")
@click.option("--controller", "target", default="tcp:127.0.0.1:6653", show_default=True,
              help="The controller's OpenFlow address (its --ofp-listen).")
def setup_cmd(ovsdb: str, bridge: str, tunnel: str, tunnel_port: str, datapath_type: str, target: str) -> None:
    """Create the bridge (fail_mode=secure, tunnel port) or make an existing one conform.
    The controller target is set only if it differs: setting it wipes the flow table, so
    running this again (a restarted pod) keeps every flow."""
    spec = BridgeSpec(bridge, tunnel, tunnel_port, datapath_type)
    _vsctl(ovsdb, *bridge_args(spec))
    current = _vsctl(ovsdb, "get-controller", bridge).split()
    change = controller_args(bridge, target, current)
    if change:
        _vsctl(ovsdb, *change)
    click.echo(f"bridge {bridge}: fail_mode=secure, tunnel {tunnel}, controller {target}"
               f"{' (set)' if change else ' (unchanged, flows kept)'}")


def _node_pod_cidrs(node_name: str, kubeconfig: str | None) -> list[str]:
    from kubernetes import client, config  # only this command needs the API

    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
        found = client.CoreV1Api().list_node(field_selector=f"metadata.name={node_name}").items
    except Exception as exc:  # the client raises many kinds; each is one line for the log
        fail(f"node {node_name}: cannot read the Node: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if not found:
        fail(f"node {node_name}: no such Node in the cluster (is --node / NODE_NAME spec.nodeName?)")
    spec = found[0].spec
    return list(spec.pod_cid_rs or ([spec.pod_cidr] if spec.pod_cidr else []))


@node.command("install-cni")
@click.option("--node", "node_name", default=lambda: os.environ.get("NODE_NAME", ""),
              help="This node's name  [default: $NODE_NAME]")
@click.option("--pod-cidr", "pod_cidrs", multiple=True, help="Instead of the Node's spec.podCIDRs; repeatable.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), help="Else the in-cluster config.")
@click.option("--cni-bin-dir", type=click.Path(path_type=Path), default=Path("/opt/cni/bin"), show_default=True)
@click.option("--cni-conf-dir", type=click.Path(path_type=Path), default=Path("/etc/cni/net.d"), show_default=True)
@OVSDB
@BRIDGE
@click.option("--mtu", type=click.IntRange(576, 9000), default=1450, show_default=True,
              help="Pod MTU: the underlay's less the tunnel header (50 for VXLAN over IPv4).")
@click.option("--check-bridge/--no-check-bridge", default=True, show_default=True,
              help="Refuse to install a conflist naming a bridge that OVSDB does not have.")
def install_cni_cmd(node_name: str, pod_cidrs: tuple[str, ...], kubeconfig: str | None, cni_bin_dir: Path,
                    cni_conf_dir: Path, ovsdb: str, bridge: str, mtu: int, check_bridge: bool) -> None:
    """Install sdn-netpol-cni (a zipapp run by the host's python3) and a conflist with this
    node's pod CIDRs, each written beside its destination and renamed over it."""
    if not node_name and not pod_cidrs:
        fail("node name missing: pass --node or set NODE_NAME (downward API: spec.nodeName)")
    raw = list(pod_cidrs) or _node_pod_cidrs(node_name, kubeconfig)
    if check_bridge:
        proc = subprocess.run(["ovs-vsctl", f"--db={ovsdb}", "--timeout=10", "br-exists", bridge],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            fail(f"bridge {bridge!r} does not exist in OVSDB {ovsdb}"
                 + (f": {proc.stderr.strip()}" if proc.stderr.strip() else " (run `sdn-netpol node setup` first)"))
    try:
        cidrs = parse_pod_cidrs(node_name or "(unnamed)", raw, "--pod-cidr" if pod_cidrs else "spec.podCIDRs")
        plugin, listed = install(cni_bin_dir, cni_conf_dir, conflist(cidrs, bridge, ovsdb, mtu))
    except (InstallError, OSError) as exc:
        fail(str(exc))
    click.echo(f"installed {plugin} and {listed} ({', '.join(str(c) for c in cidrs)})")
