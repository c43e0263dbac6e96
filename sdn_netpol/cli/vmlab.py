"""`sdn-netpol lab …` on a kernel-datapath lab (`lab up --datapath kernel`; issue 16).

The nodes are qemu VMs (sdn_netpol/lab/vmlab.py). `lab up --datapath kernel` brings one up
in the workdir; from then on, until `lab down`, the lab group (sdn_netpol/cli/lab.py) hands
the workdir's commands to the ones here: same names, options and output as on the netdev
lab. `trace` and `flows` run the node commands (`sdn-netpol trace`/`flows`, docs/debugging.md)
inside the node's VM, on its own switch and folder; `stats` reads every VM's switch from here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import click

from sdn_netpol.cli import debugview
from sdn_netpol.cli.options import PATHS, PORT, PROTOCOL
from sdn_netpol.cli.render import show_report, wide_console
from sdn_netpol.debug.stats import Stats
from sdn_netpol.lab.store import LabError, read_objects, ref_of
from sdn_netpol.lab.vmlab import GUEST_MANIFESTS, VmLab

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)


def up(workdir: Path, paths: tuple[Path, ...], nodes: int) -> None:
    """`lab up --datapath kernel`: the VMs, their nodes and the model's pods."""
    objects = read_objects(paths)  # validated before anything is touched
    lab = VmLab(workdir.resolve(), nodes)
    lab.up(objects)
    click.echo(f"lab up: {nodes} kernel-datapath node(s) (qemu VMs), {len(lab.pods)} pod(s), vxlan")
    for key, pod in sorted(lab.pods.items()):
        click.echo(f"  {key:24} {pod.node:8} {pod.ip}")
    click.echo(f"ready in {lab.timings['up']:.1f} s (boot {lab.timings['boot']:.1f} s, "
               f"nodes and pods {lab.timings['nodes and pods']:.1f} s); VM memory (RSS): "
               + ", ".join(f"{n} {m} MiB" for n, m in lab.rss_mib().items()))


def down_quietly(workdir: Path) -> None:
    """Before a netdev lab takes the workdir: whatever kernel lab is there goes."""
    if VmLab.exists(workdir):
        VmLab(workdir.resolve()).down()


def unavailable(name: str) -> click.Command:
    def fail() -> None:
        raise LabError(f"lab {name}: not available on a kernel-datapath lab (docs/lab.md, \"Kernel datapath\")")
    return click.Command(name, callback=fail, help="Not available on a kernel-datapath lab.")


def _workdir(ctx: click.Context) -> Path:
    assert ctx.parent is not None  # the lab group, which has --workdir
    return Path(ctx.parent.params["workdir"]).resolve()


def _lab(ctx: click.Context) -> VmLab:
    workdir = _workdir(ctx)
    lab = VmLab.load(workdir)
    if lab is None:
        raise LabError(f"no kernel-datapath lab in {workdir}")
    return lab


def _change(ctx: click.Context, paths: tuple[Path, ...], delete: bool) -> None:
    start = time.monotonic()
    objects = read_objects(paths)
    lab = _lab(ctx)
    if delete:
        lab.delete([ref_of(doc) for doc in objects])
    else:
        lab.apply(objects)
    for doc in objects:
        click.echo(f"{'deleted' if delete else 'applied'} {ref_of(doc)}")
    click.echo(f"realized on every node in {time.monotonic() - start:.2f} s")


@click.command()
@PATHS
@click.pass_context
def apply(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Create or update objects; returns once every node has realized the change."""
    _change(ctx, paths, delete=False)


@click.command()
@PATHS
@click.pass_context
def delete(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Delete objects; returns once every node has realized the change."""
    _change(ctx, paths, delete=True)


@click.command()
@PROTOCOL
@PORT
@OUTPUT
@click.pass_context
def probe(ctx: click.Context, protocol: str, port: int, output: str) -> None:
    """Every pod to every pod with real packets, next to the engine's matrix."""
    report = _lab(ctx).probe(protocol, port)
    if output == "json":
        click.echo(json.dumps(report.to_json()))
    else:
        show_report(wide_console(), report)
    if report.mismatches:
        ctx.exit(1)


@click.command()
@OUTPUT
@click.pass_context
def status(ctx: click.Context, output: str) -> None:
    """Nodes (VMs), controllers (their /status), pods and servers."""
    doc = _lab(ctx).status()
    if output == "json":
        click.echo(json.dumps(doc))
        return
    for node in doc["nodes"]:
        ctl = node.get("controller") or {}
        running = "running" if node["controller_running"] else "not running"
        click.echo(f"{node['name']} {node['address']} pods {node['pod_cidr']} (kernel datapath, VM "
                   f"{node['vm_rss_mib']} MiB): controller {running}; realized_generation="
                   f"{ctl.get('realized_generation')} ports={len(ctl.get('ports') or {})} "
                   f"last_error={ctl.get('last_error') or node.get('controller_error')}")
    for key, pod in doc["pods"].items():
        server = "serving" if pod["server_running"] else "server down"
        click.echo(f"  {key:24} {pod['node']:8} {pod['ip']:15} {server}: {' '.join(pod['ports'])}")


@click.command()
@OUTPUT
@click.pass_context
def verify(ctx: click.Context, output: str) -> None:
    """Every kernel megaflow of every node against a fresh translation through the current
    tables; exit 1 if any still disagrees after a revalidator round."""
    reports = _lab(ctx).verify()
    if output == "json":
        click.echo(json.dumps(reports))
    else:
        for node, r in reports.items():
            click.echo(f"{node}: {r['checked']} megaflows checked, {r['unverifiable']} gone meanwhile, "
                       f"{len(r['stale'])} stale")
            for stale in r["stale"]:
                click.echo(f"  {stale['key']} installed: {stale['installed']} | tables say: {stale['expected']}")
    if any(r["stale"] for r in reports.values()):
        ctx.exit(1)


def _in_node(ctx: click.Context, lab: VmLab, node: str, argv: list[str]) -> None:
    if node not in lab.vms:
        raise LabError(f"no node {node!r} (nodes: {', '.join(lab.vms)})")
    done = lab.vms[node].run(["sdn-netpol", *argv, "--node", node, "--source", f"dir:{GUEST_MANIFESTS}"],
                             timeout=300)
    click.echo(done.stdout, nl=False)
    click.echo(done.stderr, nl=False, err=True)
    if done.rc:
        ctx.exit(done.rc)


@click.command()
@click.option("--from", "source", required=True, metavar="NS/POD", help="The sending pod.")
@click.option("--to", "destination", required=True, metavar="NS/POD|IP", help="The receiving pod, or an address.")
@PORT
@click.option("--protocol", type=click.Choice(["TCP", "UDP", "SCTP"], case_sensitive=False), default="TCP",
              show_default=True)
@click.option("--state", "ct_state", type=click.Choice(["new", "established", "reply"]), default="new",
              show_default=True, help="The packet's connection state (conntrack).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def trace(ctx: click.Context, source: str, destination: str, port: int, protocol: str, ct_state: str,
          output: str) -> None:
    """One packet through the switch of the source pod's node and, for a pod on another node,
    of the destination's (`sdn-netpol trace` in each VM, as on a real cluster's nodes)."""
    lab = _lab(ctx)
    if source not in lab.pods:
        raise LabError(f"--from {source}: no such pod in the lab")
    argv = ["trace", "--from", source, "--to", destination, "--port", str(port), "--protocol", protocol,
            "--state", ct_state, "-o", output]
    nodes = [lab.pods[source].node]
    if destination in lab.pods and lab.pods[destination].node not in nodes:
        nodes.append(lab.pods[destination].node)  # entered from the tunnel there
    for node in nodes:
        _in_node(ctx, lab, node, argv)


@click.command()
@click.option("--node", default=None, help="One node (default: every node).")
@click.option("--policy", default=None, metavar="NS/NAME", help="Only this NetworkPolicy's flows.")
@click.option("--rule", type=click.IntRange(0), default=None, help="Only this rule of --policy (needs --direction).")
@click.option("--direction", type=click.Choice(["ingress", "egress"]), default=None)
@click.option("--pod", default=None, metavar="NS/POD", help="Only this pod's flows.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def flows(ctx: click.Context, node: str | None, policy: str | None, rule: int | None, direction: str | None,
          pod: str | None, output: str) -> None:
    """A policy's, a rule's or a pod's installed flows on every node (or one), with counters."""
    argv = ["flows", "-o", output]
    for name, value in (("--policy", policy), ("--rule", rule), ("--direction", direction), ("--pod", pod)):
        if value is not None:
            argv += [name, str(value)]
    lab = _lab(ctx)
    for name in [node] if node else list(lab.vms):
        if output == "text":
            click.echo(f"== {name}")
        _in_node(ctx, lab, name, argv)


@click.command()
@OUTPUT
@click.pass_context
def stats(ctx: click.Context, output: str) -> None:
    """Per-rule packet and byte counters, and packets dropped by each pod's isolation, read
    from every node's switch now."""
    lab = _lab(ctx)
    sample = cast(Stats, debugview.guarded(lab.stats, LabError))
    debugview.show_stats(sample, output)


@click.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the VMs: no qemu process, overlay, socket or namespace left."""
    start = time.monotonic()
    VmLab(_workdir(ctx)).down()  # by state and markers: works on a crashed lab too
    click.echo(f"lab down in {time.monotonic() - start:.2f} s")


COMMANDS: dict[str, click.Command] = {c.name or "": c for c in (apply, delete, probe, status, verify, trace, flows,
                                                                  stats, down)}
