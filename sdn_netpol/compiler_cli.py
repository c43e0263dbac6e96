"""`sdn-netpol compile`: print the exact flow table one node's br-int gets.

The output is what a user feeds to `ovs-ofctl --bundle replace-flows br-int FILE` (or
compares with `ovs-ofctl -O OpenFlow15 --no-stats --no-names dump-flows br-int`), so the
text comes from the one renderer the controller and the golden files use. Registered in
`sdn_netpol/cli.py`; `python -m sdn_netpol.compiler_cli` runs the same commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import render_actions, render_flows, render_match
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.node_inputs import InputError, Inputs, load_inputs, node_context, read_ports_file
from sdn_netpol.policy.state import ClusterState

OUTPUTS = ("ofctl", "json")

COMPILE_HELP = """Print the flows node NODE's br-int must hold for the given manifests.

\b
PATH: manifest files or folders (YAML multi-document, JSON, kind: List), as for
`validate`. Pods are on NODE when spec.nodeName is NODE and need status.podIP(s).
`kind: Node` objects give each node's tunnel endpoint (status.addresses InternalIP).

\b
--ports FILE (YAML or JSON, every key optional):
  pods:             {NAMESPACE/POD: OFPORT}   br-int ofport of each local pod
  tunnel:           OFPORT                    the VXLAN port (null: no tunnel)
  gateway:          OFPORT                    the port to the outside (null/absent: none)
  gateway_peer_mac: "52:54:00:00:00:01"       router behind the gateway (quote it in YAML)
  nodes:            {NODE: IP}                tunnel endpoints (override Node objects)
Without a ports file (or for pods it omits) local pods get ofports 1, 2, ... in
namespace/name order, skipping ports the file gives; the tunnel is port 32766; nodes
without an address get 192.168.0.N in name order. So the output is deterministic.

\b
-o ofctl: one flow per line, exactly what
  `ovs-ofctl -O OpenFlow15 --bundle replace-flows br-int FILE` takes (the first line is
  a `#` comment, which ovs-ofctl ignores).
-o json: [{"table", "priority", "cookie" (hex), "match", "actions"}], match and actions
  as ovs-ofctl text.

Invalid manifests or ports file: every error on stderr, exit status 1.
"""


def compile_inputs(inputs: Inputs, node: str, ports: Path | None = None) -> tuple[FlowSet, str]:
    """(flows, header comment) for NODE; raises InputError listing every problem."""
    if inputs.errors:
        raise InputError(inputs.errors)
    state = ClusterState.from_parse(inputs.result)
    ports_file = read_ports_file(ports) if ports is not None else None
    context = node_context(state, node, inputs, ports_file)
    flows = compile_node(state, context)
    return flows, _header(state, context, flows)


def _header(state: ClusterState, context: NodeContext, flows: FlowSet) -> str:
    """Counts only (no paths, no time): the golden files must not depend on where they live."""
    count = len(state.policies)
    return (f"# sdn-netpol compile --node {context.name}: {len(context.bindings)} local pod(s) of "
            f"{len(state.pods)}, {count} network polic{'y' if count == 1 else 'ies'}, {len(flows)} flows")


def render_ofctl(flows: FlowSet, header: str) -> str:
    return f"{header}\n{render_flows(flows)}"


def render_json(flows: FlowSet) -> str:
    rows = [
        {"table": f.table, "priority": f.priority, "cookie": f"{f.cookie:#x}",
         "match": render_match(f.match), "actions": render_actions(f.actions)}
        for f in flows
    ]
    return json.dumps(rows, indent=1) + "\n"


def render(flows: FlowSet, header: str, output: str) -> str:
    return render_ofctl(flows, header) if output == "ofctl" else render_json(flows)


def compile_text(paths: Sequence[Path | str], node: str, ports: Path | None = None, output: str = "ofctl") -> str:
    """The exact stdout of `sdn-netpol compile` (the golden files are this text)."""
    return render(*compile_inputs(load_inputs(paths), node, ports), output)


def _fail(errors: Sequence[str]) -> NoReturn:
    for error in errors:
        click.echo(f"error: {error}", err=True)
    raise SystemExit(1)


def _notes(inputs: Inputs) -> None:
    for note in inputs.result.skipped:
        click.echo(f"note: {note}", err=True)


@click.command(name="compile", help=COMPILE_HELP)
@click.option("-f", "--filename", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Manifest file (YAML/JSON, multi-document, kind: List) or folder; repeatable.")
@click.option("--node", required=True, help="Node name (spec.nodeName of its pods).")
@click.option("--ports", "ports", type=click.Path(path_type=Path, dir_okay=False),
              help="Ports file (YAML/JSON): pods, tunnel, gateway, gateway_peer_mac, nodes.")
@click.option("-o", "--output", type=click.Choice(OUTPUTS), default="ofctl", show_default=True)
def compile_cmd(paths: tuple[Path, ...], node: str, ports: Path | None, output: str) -> None:
    try:
        inputs = load_inputs(paths)
        _notes(inputs)
        flows, header = compile_inputs(inputs, node, ports)
    except InputError as exc:
        _fail(exc.errors)
    click.echo(render(flows, header, output), nl=False)


@click.command(name="flows-regen")
@click.argument("root", default="flows", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if any golden file is out of date.")
def flows_regen_cmd(root: Path, check: bool) -> None:
    """Regenerate the golden flow tables under ROOT (default: flows/). Review the diff!"""
    from sdn_netpol.golden_flows import regenerate

    try:
        changed = regenerate(root, write=not check)
    except InputError as exc:
        _fail(exc.errors)
    for path in changed:
        click.echo(f"{'stale' if check else 'wrote'}: {path}")
    click.echo(f"{len(changed)} golden file(s) {'out of date' if check else 'changed'}")
    if check and changed:
        raise SystemExit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def _standalone() -> None:
    """The compile commands alone (`python -m sdn_netpol.compiler_cli`)."""


_standalone.add_command(compile_cmd)
_standalone.add_command(flows_regen_cmd)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(_standalone())
