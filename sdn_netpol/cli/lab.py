"""`sdn-netpol lab …` and `sdn-netpol demo`: the lab (sdn_netpol/lab/) from a shell.
Registered in sdn_netpol/cli/__init__.py.

Output contracts (DESIGN.md): `lab probe -o json` prints the matrix shape plus `expected`
and `mismatches`. Exit status: 0 when the command did what it says; 1 on an error, and for
`probe` when the measured matrix differs from the engine's (the JSON is printed anyway).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from sdn_netpol.cli.options import PATHS, PORT, PROTOCOL, TEXT_OR_JSON
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import DEFAULT_WORKDIR, VM_STATE_FILE
from sdn_netpol.lab.store import LabError

if TYPE_CHECKING:
    from rich.console import Console

    from sdn_netpol.lab.lab import ExternalResult, ProbeReport

# Rendering (rich), the debugging views and the kernel lab's commands are imported by the
# commands that use them: `lab apply`/`delete` run once per change from scripts and tests
# (issue 17.4: 1,000 policies realized in < 3 s, CLI start-up included).

WORKDIR = click.option("--workdir", type=click.Path(path_type=Path), default=DEFAULT_WORKDIR, show_default=True,
                       envvar="SDN_NETPOL_LAB_WORKDIR", help="Lab state, OVS rundirs, manifests folder, logs.")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
DEMO_WORKDIR = Path("/tmp/sdn-netpol-demo")


def _lab(ctx: click.Context) -> Lab:
    lab: Lab = ctx.obj
    return lab


class _LabGroup(click.Group):
    """Turns LabError into a one-line error and exit 1 (no traceback for expected failures)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LabError as exc:
            raise click.ClickException(str(exc)) from exc

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A workdir holding a kernel-datapath lab (`up --datapath kernel`) gets the commands
        of sdn_netpol/cli/vmlab.py, same names and options; `up` stays this group's."""
        workdir = ctx.params.get("workdir")
        if cmd_name != "up" and workdir is not None and (Path(workdir) / VM_STATE_FILE).exists():
            from sdn_netpol.cli import vmlab

            return vmlab.COMMANDS.get(cmd_name) or vmlab.unavailable(cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(name="lab", cls=_LabGroup)
@WORKDIR
@click.pass_context
def lab(ctx: click.Context, workdir: Path) -> None:
    """A multi-node cluster on this machine: OVS per node, CNI pods, controllers, real probes."""
    ctx.obj = Lab(workdir)


@lab.command()
@PATHS
@click.option("--nodes", type=click.IntRange(1, 250), default=3, show_default=True, help="Number of nodes.")
@click.option("--tunnel", type=click.Choice(["vxlan", "geneve"]), default="vxlan", show_default=True)
@click.option("--external", "external", multiple=True, metavar="IP",
              help="Address of a host outside the cluster, reachable through a gateway port; repeatable.")
@click.option("--flows", type=click.Choice(["controller", "static"]), default="controller", hidden=True,
              help="Debug: 'static' compiles and loads flows from the lab instead of running controllers.")
@click.option("--ip-family", type=click.Choice(["4", "6", "dual"]), default="4", show_default=True,
              help="Pod addresses: IPv4 (10.244.N.0/24 per node), IPv6 (fd00:10:244:N::/64) or both, "
                   "IPv4 first; the tunnels stay on the IPv4 underlay.")
@click.option("--datapath", type=click.Choice(["netdev", "kernel"]), default="netdev", show_default=True,
              help="netdev: nodes are namespaces with a userspace OVS each; kernel: nodes are qemu VMs "
                   "with OVS on the guest kernel's datapath (make vm-image; docs/lab.md).")
@click.pass_context
def up(ctx: click.Context, paths: tuple[Path, ...], nodes: int, tunnel: str, external: tuple[str, ...],
       flows: str, ip_family: str, datapath: str) -> None:
    """Create the lab from a model (cleans up a previous or crashed lab in the same workdir first)."""
    from rich.table import Table

    from sdn_netpol.cli import vmlab
    from sdn_netpol.cli.render import wide_console

    lab_ = _lab(ctx)
    if datapath == "kernel":
        if (tunnel, external, flows, ip_family) != ("vxlan", (), "controller", "4"):
            raise LabError("--datapath kernel: VXLAN, IPv4, controllers and no --external only")
        lab_.down()  # a netdev lab in this workdir
        vmlab.up(lab_.workdir, paths, nodes)
        return
    vmlab.down_quietly(lab_.workdir)  # a kernel lab in this workdir
    state = lab_.up(paths, nodes, tunnel, external, flows, ip_family)
    family = {"4": "IPv4", "6": "IPv6", "dual": "dual-stack"}[ip_family]
    table = Table(title=f"lab up: {len(state.nodes)} node(s), {len(state.pods)} pod(s), {tunnel}, {family}")
    for column in ("pod", "node", "ip", "serves"):
        table.add_column(column)
    for key, pod in sorted(state.pods.items()):
        table.add_row(key, pod.node, " ".join(pod.ips), " ".join(f"{p}/{n}" for p, n in pod.ports))
    console = wide_console()
    console.print(table)
    console.print(f"ready in {lab_.timings.get('total', 0):.1f} s  ({_phases(lab_.timings)})")


def _phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in timings.items() if k != "total")


@lab.command()
@PATHS
@click.pass_context
def apply(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Create or update objects; returns once every node has realized the change."""
    start = time.monotonic()
    for line in _lab(ctx).apply(paths):
        click.echo(line)
    click.echo(f"realized on every node in {time.monotonic() - start:.2f} s")


@lab.command()
@PATHS
@click.pass_context
def delete(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Delete objects (a Namespace takes its pods and policies); returns once realized."""
    start = time.monotonic()
    for line in _lab(ctx).delete(paths):
        click.echo(line)
    click.echo(f"realized on every node in {time.monotonic() - start:.2f} s")


@lab.command()
@PROTOCOL
@PORT
@click.option("--family", type=click.Choice(["4", "6"]), default=None,
              help="Probe with IPv4 or IPv6 packets (the expected matrix in that family too).  "
                   "[default: the lab's first family]")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def probe(ctx: click.Context, protocol: str, port: int, family: str | None, output: str) -> None:
    """Every pod to every pod with real packets, next to the engine's matrix."""
    from sdn_netpol.cli.render import show_report, wide_console

    lab_ = _lab(ctx)
    report = lab_.probe(protocol, port, family=None if family is None else int(family))
    if output == "json":
        click.echo(json.dumps(report.to_json()))
    else:
        console = wide_console()
        show_report(console, report)
        if (family or "4") == "4":
            show_external(console, lab_.probe_external(protocol, port))
    if report.mismatches:
        ctx.exit(1)


def show_external(console: Console, results: list[ExternalResult]) -> None:
    for r in results:
        mark = "✓" if r.allowed else "·"
        bad = "" if r.allowed == r.expected else f"  [bold red]✗ expected {'allowed' if r.expected else 'denied'}[/]"
        console.print(f"  external {r.source} → {r.destination}: {mark} {r.outcome}{bad}")


@lab.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def status(ctx: click.Context, output: str) -> None:
    """Nodes, controllers (their /status), pods and servers."""
    from sdn_netpol.cli.render import wide_console

    doc = _lab(ctx).status()
    if output == "json":
        click.echo(json.dumps(doc))
        return
    console = wide_console()
    for node in doc["nodes"]:
        ctl = node.get("controller") or {}
        state = "running" if node["controller_running"] else "not running"
        error = ctl.get("last_error") or node.get("controller_error")
        console.print(f"{node['name']} {node['address']} pods {node['pod_cidr']}: "
                      f"controller {state}; realized_generation={ctl.get('realized_generation')} "
                      f"ports={len(ctl.get('ports') or {})} last_error={error}")
        for ref, policy in (ctl.get("policies") or {}).items():
            how = "invalid (last valid version enforced)" if policy["invalid"] else (
                "realized" if policy["realized"] else "not realized yet")
            console.print(f"    policy {ref}: {how} (generation {policy['generation']})")
    for key, pod in doc["pods"].items():
        server = "serving" if pod["server_running"] else "server down"
        console.print(f"  {key:24} {pod['node']:8} {pod['ip']:15} {server}: {' '.join(pod['ports'])}")


@lab.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def verify(ctx: click.Context, output: str) -> None:
    """Every datapath megaflow of every node against a fresh translation of its key
    through the current OpenFlow tables; exit 1 if any still disagrees after a
    revalidator round (docs/reliability.md)."""
    reports = _lab(ctx).verify()
    if output == "json":
        click.echo(json.dumps({node: {"checked": r.checked, "unverifiable": r.unverifiable,
                                      "stale": [{"key": s.flow.key, "installed": s.flow.actions,
                                                 "expected": s.expected, "packets": s.flow.packets}
                                                for s in r.stale]}
                               for node, r in reports.items()}))
    else:
        for node, r in reports.items():
            click.echo(f"{node}: {r.checked} megaflows checked, {r.unverifiable} gone meanwhile, "
                       f"{len(r.stale)} stale")
            for stale in r.stale:
                click.echo(f"  {stale.describe()}")
    if any(r.stale for r in reports.values()):
        ctx.exit(1)


CT_STATE = click.option("--state", "ct_state", type=click.Choice(["new", "established", "reply"]), default="new",
                        show_default=True, help="The packet's connection state (conntrack).")


@lab.command()
@click.option("--from", "source", required=True, metavar="NS/POD", help="The sending pod.")
@click.option("--to", "destination", required=True, metavar="NS/POD|IP", help="The receiving pod, or an address.")
@PORT
@PROTOCOL
@CT_STATE
@TEXT_OR_JSON
@click.pass_context
def trace(ctx: click.Context, source: str, destination: str, port: int, protocol: str, ct_state: str,
          output: str) -> None:
    """What the switches do with one packet: every flow it meets on the source's node and,
    through the tunnel, on the destination's; the verdict and the policy rule (or the
    isolation) that decided. Exit 2 on bad input."""
    from sdn_netpol.cli import debugview
    from sdn_netpol.debug.trace import TraceReport
    from sdn_netpol.lab import debug

    lab_ = _lab(ctx)

    def run() -> TraceReport:
        return debug.trace(lab_.state(), lab_.cluster(), source, destination, port, protocol, ct_state)

    report = cast(TraceReport, debugview.guarded(run, LabError))
    if output == "json":
        click.echo(debugview.dumps(report.to_json()))
    else:
        click.echo(debugview.trace_text(f"{source} -> {destination} {protocol}/{port} ({ct_state})", report))


@lab.command()
@click.option("--node", default=None, help="One node (default: every node).")
@click.option("--policy", default=None, metavar="NS/NAME", help="Only this NetworkPolicy's flows.")
@click.option("--rule", type=click.IntRange(0), default=None, help="Only this rule of --policy (needs --direction).")
@click.option("--direction", type=click.Choice(["ingress", "egress"]), default=None,
              help="Only this direction of --policy.")
@click.option("--pod", default=None, metavar="NS/POD", help="Only this pod's flows (ports, routes, isolation).")
@TEXT_OR_JSON
@click.pass_context
def flows(ctx: click.Context, node: str | None, policy: str | None, rule: int | None, direction: str | None,
          pod: str | None, output: str) -> None:
    """The installed flows of a policy, a rule or a pod (selected by cookie on the switch),
    grouped by table, with their counters and decoded owners. Exit 2 on bad input."""
    from sdn_netpol.cli import debugview
    from sdn_netpol.debug.flows import DIRECTIONS, FlowView, Selection
    from sdn_netpol.lab import debug

    lab_ = _lab(ctx)
    selection = Selection(policy, rule, DIRECTIONS.get(direction or ""), pod)

    def run() -> list[FlowView]:
        return debug.flows(lab_.state(), lab_.cluster(), node, selection)

    shown = cast(list[FlowView], debugview.guarded(run, LabError))
    if output == "json":
        click.echo(debugview.dumps([f.to_json() for f in shown]))
    else:
        click.echo(debugview.flows_text(shown))


@lab.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def stats(ctx: click.Context, output: str) -> None:
    """Per-rule packet and byte counters, and packets dropped by each pod's isolation, read
    from every node's switch now."""
    from sdn_netpol.cli import debugview
    from sdn_netpol.debug.stats import Stats
    from sdn_netpol.lab import debug

    lab_ = _lab(ctx)
    sample = cast(Stats, debugview.guarded(lambda: debug.rule_stats(lab_.state(), lab_.cluster()), LabError))
    debugview.show_stats(sample, output)


@lab.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Remove every namespace, interface and process of the lab."""
    seconds = _lab(ctx).down()
    click.echo(f"lab down in {seconds:.2f} s")


@click.command()
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (then: sdn-netpol lab --workdir DIR down).")
@click.option("--workdir", type=click.Path(path_type=Path), default=DEMO_WORKDIR, show_default=True,
              help="The demo's own lab directory (a lab of yours in the default workdir is left alone).")
def demo(keep: bool, workdir: Path) -> None:
    """The seed example on a real 2-node lab: test-network-policy, measured beside expected."""
    from sdn_netpol.cli.render import show_report, wide_console

    console = wide_console()
    lab_ = Lab(workdir)
    start = time.monotonic()
    try:
        console.print("[bold]1.[/] lab up: 2 nodes, namespaces default and myproject, external host 172.17.0.10 "
                      "and 172.17.1.10")
        lab_.up([EXAMPLES / "cluster.yaml"], 2, external=("172.17.0.10", "172.17.1.10"))
        console.print(f"   up in {lab_.timings['total']:.1f} s")
        before = lab_.probe("TCP", 6379)
        console.print(f"[bold]2.[/] no policy: {_count(before)} pod pairs reach TCP/6379")
        console.print("[bold]3.[/] apply test-network-policy: default/db accepts 6379 from 172.17.0.0/16 except "
                      "172.17.1.0/24,\n   from namespaces project=myproject and from pods role=frontend; "
                      "it may only send to 10.0.0.0/24 on 5978")
        lab_.apply([EXAMPLES / "test-network-policy.yaml"])
        ok = True
        for port in (6379, 5978):
            report = lab_.probe("TCP", port)
            show_report(console, report)
            external = lab_.probe_external("TCP", port)
            show_external(console, [r for r in external if r.destination == "default/db"])
            ok = ok and not report.mismatches and all(r.allowed == r.expected for r in external)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if not keep:
            lab_.down()
    console.print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - start:.1f} s"
                  + (f"; lab left up: sdn-netpol lab --workdir {workdir} status|probe|down" if keep
                     else "; lab torn down"))
    if not ok:
        raise SystemExit(1)


def _count(report: ProbeReport) -> str:
    allowed = sum(v for row in report.measured.allowed.values() for v in row.values())
    return f"{allowed}/{len(report.measured.pods) ** 2}"

