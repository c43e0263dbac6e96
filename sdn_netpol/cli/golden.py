"""The layout of flows/ (golden flow tables) and its one regeneration path.

    flows/cluster.yaml            the cluster every example uses (Nodes, Namespaces, Pods)
    flows/<node>.ports            that node's br-int ports, YAML (optional; see `compile --help`;
                                  not *.yaml, so that `-f flows/` never reads it as a manifest)
    flows/<example>/policy.yaml   the example's NetworkPolicies
    flows/<example>/<node>.flows  exactly `sdn-netpol compile -f cluster.yaml -f policy.yaml
                                  --node <node> [--ports <node>.ports]`

Nodes are the `kind: Node` objects of cluster.yaml. Regeneration and the golden test both
go through `compile_text` (cli/flowtext.py), the function behind the CLI, so a golden file
is by construction what a user gets from the command; the text holds no paths or times, so
a re-run is byte-identical. `sdn-netpol flows-regen` (cli/flows.py) runs `regenerate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdn_netpol.cli.flowtext import compile_text
from sdn_netpol.inputs.node_inputs import InputError, load_inputs

CLUSTER = "cluster.yaml"
POLICY = "policy.yaml"
SUFFIX = ".flows"
PORTS_SUFFIX = ".ports"


@dataclass(frozen=True)
class GoldenCase:
    """One example compiled for one node."""

    example: str
    node: str
    cluster: Path
    policy: Path
    ports: Path | None
    expected: Path

    def cli_args(self) -> list[str]:
        """Arguments of `sdn-netpol compile` that print `expected`."""
        args = ["-f", str(self.cluster), "-f", str(self.policy), "--node", self.node]
        return args + (["--ports", str(self.ports)] if self.ports is not None else [])

    def render(self) -> str:
        return compile_text([self.cluster, self.policy], self.node, self.ports)


def nodes(root: Path) -> list[str]:
    inputs = load_inputs([root / CLUSTER])
    if inputs.errors:
        raise InputError(inputs.errors)
    if not inputs.node_names:
        raise InputError([f"{root / CLUSTER}: declares no kind: Node object, so no node to compile for"])
    return sorted(inputs.node_names)


def examples(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if (d / POLICY).is_file())


def cases(root: Path) -> list[GoldenCase]:
    result = []
    for node in nodes(root):
        ports = root / f"{node}{PORTS_SUFFIX}"
        for example in examples(root):
            folder = root / example
            result.append(GoldenCase(example, node, root / CLUSTER, folder / POLICY,
                                     ports if ports.is_file() else None, folder / f"{node}{SUFFIX}"))
    return result


def stale_files(root: Path) -> list[Path]:
    """*.flows files no case produces (a removed node or example)."""
    wanted = {c.expected for c in cases(root)}
    return sorted(p for p in root.glob(f"*/*{SUFFIX}") if p not in wanted)


def regenerate(root: Path, write: bool = True) -> list[Path]:
    """Bring every golden file up to date; returns the paths that changed (or would)."""
    changed = []
    for case in cases(root):
        text = case.render()
        if not case.expected.is_file() or case.expected.read_text() != text:
            changed.append(case.expected)
            if write:
                case.expected.write_text(text)
    for path in stale_files(root):
        changed.append(path)
        if write:
            path.unlink()
    return changed
