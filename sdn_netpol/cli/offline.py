"""`sdn-netpol validate | matrix | explain`: the policy engine on manifests, no switch.

For people debugging policies: what the API server would reject, who may reach whom, and
why. Registered in sdn_netpol/cli/__init__.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import click
from netaddr import AddrFormatError, IPAddress

from sdn_netpol.cli.options import FAMILY, PATHS, PORT, PROTOCOL
from sdn_netpol.cli.render import print_matrix, wide_console
from sdn_netpol.inputs.manifests import ManifestError, load_paths
from sdn_netpol.model.objects import Protocol
from sdn_netpol.model.parse import ParseResult
from sdn_netpol.policy.matrix import Matrix, build_matrix
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, FamilyError, decide, explain


def _load(paths: tuple[Path, ...], strict: bool) -> tuple[ParseResult, ClusterState]:
    try:
        result = load_paths(paths)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    for note in result.skipped:
        click.echo(f"note: {note}", err=True)
    if result.errors:
        for error in result.errors:
            click.echo(f"error: {error}", err=True)
        if strict:
            raise SystemExit(1)
        click.echo(f"warning: {len(result.errors)} invalid object(s) ignored", err=True)
    return result, ClusterState.from_parse(result)


@click.command()
@PATHS
def validate(paths: tuple[Path, ...]) -> None:
    """Check manifests as the API server would; exit 1 listing every error."""
    result, _ = _load(paths, strict=True)
    admin = len(result.cluster_policies)  # named only when there are some: the line scripts read stays
    click.echo(f"ok: {len(result.namespaces)} namespace(s), {len(result.pods)} pod(s), "
               f"{len(result.policies)} network polic{'y' if len(result.policies) == 1 else 'ies'}"
               + (f", {admin} cluster polic{'y' if admin == 1 else 'ies'}" if admin else ""))


@click.command()
@PATHS
@PROTOCOL
@PORT
@FAMILY
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def matrix(paths: tuple[Path, ...], protocol: str, port: int, family: int | None, output: str) -> None:
    """Print which pod may open a new connection to which pod on PROTOCOL/PORT (in --family
    when given; the JSON then says `"family"`, as it does whenever a pod has IPv6)."""
    _, state = _load(paths, strict=True)
    try:
        result = build_matrix(state, cast(Protocol, protocol), port, family)
    except FamilyError as exc:
        raise click.BadParameter(str(exc), param_hint="--family") from exc
    if output == "json":
        click.echo(json.dumps(result.to_json()))
    else:
        print_matrix(wide_console(), result, matrix_title(result))


def matrix_title(result: Matrix) -> str | None:
    """The default title, naming the family where the JSON would."""
    if not result.family_shown:
        return None
    family = f"IPv{result.family}" if result.family else "each pair in its first shared family"
    return f"{result.protocol}/{result.port} ({family}): may ROW connect to COLUMN?"


def _endpoint(state: ClusterState, text: str, option: str, family: int | None = None) -> Endpoint:
    if "/" in text and not _looks_like_ip(text):
        namespace, _, name = text.partition("/")
        pod = state.pod(namespace, name)
        if pod is None:
            raise click.BadParameter(f"no pod {text} in the manifests", param_hint=option)
        return Endpoint(pod=pod)
    try:
        ip = IPAddress(text)
    except (AddrFormatError, ValueError) as exc:
        raise click.BadParameter(f"{text!r} is neither NAMESPACE/POD nor an IP address",
                                 param_hint=option) from exc
    if family is not None and ip.version != family:
        raise click.BadParameter(f"{text} is not an IPv{family} address (--family {family})", param_hint=option)
    owners = [p for p in state.pods if p.in_policy_scope and ip in p.ips]
    if len(owners) == 1:  # a packet from or to a pod's address is that pod's
        click.echo(f"note: {text} is the address of pod {owners[0].key}", err=True)
        return Endpoint(pod=owners[0])
    return Endpoint(ip=ip)


def _looks_like_ip(text: str) -> bool:
    return ":" in text or text.replace(".", "").isdigit()


@click.command(name="explain")
@PATHS
@click.option("--from", "source", required=True, help="NAMESPACE/POD or an IP address.")
@click.option("--to", "destination", required=True, help="NAMESPACE/POD or an IP address.")
@PORT
@PROTOCOL
@FAMILY
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain_cmd(paths: tuple[Path, ...], source: str, destination: str, port: int, protocol: str,
                family: int | None, output: str) -> None:
    """Say whether a new connection is allowed and which policies and rules decide it (the
    JSON's `family` is the address family the connection was evaluated in)."""
    _, state = _load(paths, strict=True)
    src = _endpoint(state, source, "--from", family)
    dst = _endpoint(state, destination, "--to", family)
    try:
        verdict = decide(state, src, dst, cast(Protocol, protocol), port, family)
    except FamilyError as exc:
        raise click.BadParameter(str(exc), param_hint="--family") from exc
    if output == "json":
        click.echo(json.dumps(_verdict_json(verdict)))
        return
    lines = explain(verdict)
    if family is not None:
        lines[0] += f" over IPv{family}"
    click.echo("\n".join(lines))


def _verdict_json(verdict: object) -> object:
    from dataclasses import asdict

    data = asdict(verdict)  # type: ignore[call-overload]
    data["allowed"] = verdict.allowed  # type: ignore[attr-defined]
    for side in ("egress", "ingress"):  # the tier that decided each side (docs/cli.md)
        data[side]["decided_in"] = getattr(verdict, side).decided_in
    return data
