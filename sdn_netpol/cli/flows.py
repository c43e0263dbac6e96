"""`sdn-netpol compile` and `sdn-netpol flows-regen`: the flow tables of a node, printed or
written to the golden files under flows/.

The text itself is cli/flowtext.py's (both commands print or write exactly it); the layout
of flows/ is cli/golden.py's. Registered in sdn_netpol/cli/__init__.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from sdn_netpol.cli.flowtext import OUTPUTS, compile_inputs, render
from sdn_netpol.cli.golden import regenerate
from sdn_netpol.cli.options import PATHS
from sdn_netpol.inputs.node_inputs import InputError, Inputs, load_inputs

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


def _fail(errors: Sequence[str]) -> NoReturn:
    for error in errors:
        click.echo(f"error: {error}", err=True)
    raise SystemExit(1)


def _notes(inputs: Inputs) -> None:
    for note in inputs.result.skipped:
        click.echo(f"note: {note}", err=True)


@click.command(name="compile", help=COMPILE_HELP)
@PATHS
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
    try:
        changed = regenerate(root, write=not check)
    except InputError as exc:
        _fail(exc.errors)
    for path in changed:
        click.echo(f"{'stale' if check else 'wrote'}: {path}")
    click.echo(f"{len(changed)} golden file(s) {'out of date' if check else 'changed'}")
    if check and changed:
        raise SystemExit(1)
