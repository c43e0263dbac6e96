"""`sdn-netpol trace` and `sdn-netpol flows` against a live node's switch (sdn_netpol/debug/live.py).

Run on the node (or where its OVS run directory is mounted): the switch is this node's;
the cluster comes from the API server (`--source kube`) or a folder (`--source dir:PATH`),
as for the controller. A packet that leaves through the tunnel is traced up to it; the
report names the node to run the same command on.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import click

from sdn_netpol.cli import debugview
from sdn_netpol.cli.options import PORT, PROTOCOL, TEXT_OR_JSON
from sdn_netpol.debug import live
from sdn_netpol.debug.flows import DIRECTIONS, FlowView, Selection
from sdn_netpol.debug.trace import TraceReport

SWITCH = [
    click.option("--bridge", default="br-int", show_default=True, help="The integration bridge."),
    click.option("--ovs-rundir", type=click.Path(file_okay=False, path_type=Path), default=Path("/var/run/openvswitch"),
                 show_default=True, help="ovs-vswitchd's run directory (pidfile, unixctl and bridge sockets)."),
    click.option("--node", default=lambda: os.environ.get("NODE_NAME") or socket.gethostname(),
                 show_default="$NODE_NAME or the hostname", help="This node's name in the cluster."),
    click.option("--source", default="kube", show_default=True,
                 help="Where the cluster's objects come from: kube or dir:PATH."),
    click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None, help="For --source kube."),
]


F = TypeVar("F", bound=Callable[..., None])


def _switch_options(function: F) -> F:
    for option in reversed(SWITCH):
        function = option(function)
    return function


@click.command(name="trace")
@click.option("--from", "source_pod", required=True, metavar="NS/POD", help="The sending pod.")
@click.option("--to", "destination", required=True, metavar="NS/POD|IP", help="The receiving pod, or an address.")
@PORT
@PROTOCOL
@click.option("--state", "ct_state", type=click.Choice(["new", "established", "reply"]), default="new",
              show_default=True, help="The packet's connection state (conntrack).")
@TEXT_OR_JSON
@_switch_options
def trace_cmd(source_pod: str, destination: str, port: int, protocol: str, ct_state: str, output: str, bridge: str,
              ovs_rundir: Path, node: str, source: str, kubeconfig: str | None) -> None:
    """What this node's switch does with one packet, flow by flow, mapped to the policy rule
    (or isolation) that decided. Exit 2 on bad input."""
    def run() -> TraceReport:
        cluster, nodes = live.cluster_from(live.read_source(source, kubeconfig))
        return live.trace(live.switch(ovs_rundir), bridge, node, cluster, nodes, source_pod, destination, port,
                          protocol, ct_state)

    report = cast(TraceReport, debugview.guarded(run))
    if output == "json":
        click.echo(debugview.dumps(report.to_json()))
    else:
        click.echo(debugview.trace_text(f"{source_pod} -> {destination} {protocol}/{port} ({ct_state})", report))


@click.command(name="flows")
@click.option("--policy", default=None, metavar="NS/NAME", help="Only this NetworkPolicy's flows.")
@click.option("--rule", type=click.IntRange(0), default=None, help="Only this rule of --policy (needs --direction).")
@click.option("--direction", type=click.Choice(["ingress", "egress"]), default=None,
              help="Only this direction of --policy.")
@click.option("--pod", default=None, metavar="NS/POD", help="Only this pod's flows.")
@TEXT_OR_JSON
@_switch_options
def flows_cmd(policy: str | None, rule: int | None, direction: str | None, pod: str | None, output: str, bridge: str,
              ovs_rundir: Path, node: str, source: str, kubeconfig: str | None) -> None:
    """This node's installed flows of a policy, a rule or a pod (selected by cookie), with
    counters and decoded owners. Exit 2 on bad input."""
    def run() -> list[FlowView]:
        cluster, _nodes = live.cluster_from(live.read_source(source, kubeconfig))
        selection = Selection(policy, rule, DIRECTIONS.get(direction or ""), pod)
        return live.flows(live.switch(ovs_rundir), bridge, node, cluster, selection)

    shown = cast(list[FlowView], debugview.guarded(run))
    if output == "json":
        click.echo(debugview.dumps([f.to_json() for f in shown]))
    else:
        click.echo(debugview.flows_text(shown))
