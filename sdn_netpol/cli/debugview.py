"""Text for the debugging commands (`trace`, `flows`, stats; lab and live alike).

The JSON shapes are the values' own (`TraceReport.to_json`, `FlowView.to_json`,
`Stats.to_json`; documented in docs/cli.md); this module only lays them out for a terminal,
readable next to `ovs-ofctl dump-flows` and `ofproto/trace`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import NoReturn

import click
from rich import box
from rich.table import Table

from sdn_netpol.cli.render import wide_console
from sdn_netpol.debug.flows import FlowView
from sdn_netpol.debug.stats import Stats
from sdn_netpol.debug.trace import DebugError, StepView, TraceReport


def fail(message: str) -> NoReturn:
    """Bad input or an unreachable switch: one line on stderr, exit 2 (no traceback)."""
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(2)


def guarded(run: Callable[[], object], *errors: type[Exception]) -> object:
    caught: tuple[type[Exception], ...] = (DebugError, *errors)
    try:
        return run()
    except caught as exc:
        fail(str(exc))


def owner(step: StepView | FlowView) -> str:
    if step.policy is not None:
        return f"{step.policy} {(step.direction or '').lower()}[{step.rule}]"
    if step.pod is not None:
        return f"{step.category} {step.pod}"
    return step.category or ""


def trace_text(what: str, report: TraceReport) -> str:
    lines = [f"{what}: {report.verdict.upper()} — {report.reason}"]
    if report.decided_by:
        d = report.decided_by
        lines.append(f"decided by: {d['policy']} {str(d['direction']).lower()}[{d['rule']}]")
    if report.isolated_by:
        lines.append(f"isolated by: {', '.join(report.isolated_by)}")
    node = None
    for step in report.steps:
        if step.node != node:
            node = step.node
            lines.append(f"{node}:")
        prio = "miss" if step.priority is None else f"{step.priority:>3}"
        lines.append(f"  {step.table:>2} {step.table_name:<17} {prio}  {step.match or '(any)'}")
        lines.append(f"       {'':17}      actions={','.join(step.actions) or 'drop'}  [{owner(step)}]")
    if report.continues_on:
        lines.append(f"(continues on {report.continues_on}: trace there)")
    return "\n".join(lines)


def flows_text(flows: Iterable[FlowView]) -> str:
    lines: list[str] = []
    node = table = None
    for view in flows:
        doc = view.to_json()
        if view.node != node:
            node, table = view.node, None
            lines.append(f"{node}:")
        if view.flow.table != table:
            table = view.flow.table
            lines.append(f"  {doc['table_name']} (table={table})")
        f = view.flow
        match = f",{f.match}" if f.match else ""
        lines.append(f"    cookie={doc['cookie']}, n_packets={f.n_packets}, n_bytes={f.n_bytes}, "
                     f"priority={f.priority}{match} actions={f.actions}  [{owner(view)}]")
    return "\n".join(lines) or "no flows selected"


def stats_tables(stats: Stats) -> list[Table]:
    rules = Table(title="rules (packets and bytes they admitted)", box=box.SIMPLE_HEAD)
    for column in ("node", "namespace", "policy", "direction", "rule", "packets", "bytes"):
        rules.add_column(column, justify="right" if column in ("rule", "packets", "bytes") else "left")
    for r in stats.rules:
        rules.add_row(r.node, r.namespace, r.policy, r.direction.lower(), str(r.rule), str(r.packets), str(r.bytes))
    drops = Table(title="isolation drops (packets no rule admitted)", box=box.SIMPLE_HEAD)
    for column in ("node", "namespace", "pod", "direction", "packets"):
        drops.add_column(column, justify="right" if column == "packets" else "left")
    for d in stats.isolation_drops:
        drops.add_row(d.node, d.namespace, d.pod, d.direction.lower(), str(d.packets))
    return [rules, drops]


def show_stats(sample: Stats, output: str) -> None:
    """`stats` of either lab: JSON, or the rule and isolation-drop tables."""
    if output == "json":
        click.echo(dumps(sample.to_json()))
        return
    console = wide_console()
    for table in stats_tables(sample):
        console.print(table)


def dumps(doc: object) -> str:
    return json.dumps(doc)
