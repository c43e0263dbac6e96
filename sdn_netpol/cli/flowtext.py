"""What `sdn-netpol compile` prints, as functions: manifests (+ ports file) → one node's flows
→ text.

The output is what a user feeds to `ovs-ofctl --bundle replace-flows br-int FILE` (or
compares with `ovs-ofctl -O OpenFlow15 --no-stats --no-names dump-flows br-int`), so the
text comes from the one renderer the controller uses (compiler/ofctl.py). The command
(cli/flows.py) and the golden flow tables (cli/golden.py) both import this module, and
neither imports the other's: a golden file is by construction the command's output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import render_actions, render_flows, render_match
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.inputs.node_inputs import InputError, Inputs, load_inputs, node_context, read_ports_file
from sdn_netpol.policy.state import ClusterState

OUTPUTS = ("ofctl", "json")


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
