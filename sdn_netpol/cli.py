"""`sdn-netpol`: offline tools for people debugging policies, plus the controller and lab."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import cast

import click
from netaddr import AddrFormatError, IPAddress

from sdn_netpol.cli_render import print_matrix, wide_console
from sdn_netpol.manifests import ManifestError, load_paths
from sdn_netpol.model.objects import PROTOCOLS, Protocol
from sdn_netpol.model.parse import ParseResult
from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, decide, explain

PATHS = click.option(
    "-f", "--filename", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
    help="Manifest file (YAML/JSON, multi-document, kind: List) or folder; repeatable.",
)
PROTOCOL = click.option(
    "--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), default="TCP", show_default=True,
    callback=lambda _c, _p, v: v.upper(), help="Transport protocol of the connection.",
)
PORT = click.option("--port", type=click.IntRange(1, 65535), required=True,
                    help="Destination port number the server listens on.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kubernetes NetworkPolicy for Open vSwitch: validate, matrix, explain, compile, run."""


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


@main.command()
@PATHS
def validate(paths: tuple[Path, ...]) -> None:
    """Check manifests as the API server would; exit 1 listing every error."""
    result, _ = _load(paths, strict=True)
    click.echo(f"ok: {len(result.namespaces)} namespace(s), {len(result.pods)} pod(s), "
               f"{len(result.policies)} network polic{'y' if len(result.policies) == 1 else 'ies'}")


@main.command()
@PATHS
@PROTOCOL
@PORT
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def matrix(paths: tuple[Path, ...], protocol: str, port: int, output: str) -> None:
    """Print which pod may open a new connection to which pod on PROTOCOL/PORT."""
    _, state = _load(paths, strict=True)
    result = build_matrix(state, cast(Protocol, protocol), port)
    if output == "json":
        click.echo(json.dumps(result.to_json()))
    else:
        print_matrix(wide_console(), result)


def _endpoint(state: ClusterState, text: str, option: str) -> Endpoint:
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
    owners = [p for p in state.pods if p.in_policy_scope and ip in p.ips]
    if len(owners) == 1:  # a packet from or to a pod's address is that pod's
        click.echo(f"note: {text} is the address of pod {owners[0].key}", err=True)
        return Endpoint(pod=owners[0])
    return Endpoint(ip=ip)


def _looks_like_ip(text: str) -> bool:
    return ":" in text or text.replace(".", "").isdigit()


@main.command(name="explain")
@PATHS
@click.option("--from", "source", required=True, help="NAMESPACE/POD or an IP address.")
@click.option("--to", "destination", required=True, help="NAMESPACE/POD or an IP address.")
@PORT
@PROTOCOL
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain_cmd(paths: tuple[Path, ...], source: str, destination: str, port: int, protocol: str,
                output: str) -> None:
    """Say whether a new connection is allowed and which policies and rules decide it."""
    _, state = _load(paths, strict=True)
    src = _endpoint(state, source, "--from")
    dst = _endpoint(state, destination, "--to")
    verdict = decide(state, src, dst, cast(Protocol, protocol), port)
    if output == "json":
        click.echo(json.dumps(_verdict_json(verdict)))
    else:
        click.echo("\n".join(explain(verdict)))


def _verdict_json(verdict: object) -> object:
    from dataclasses import asdict

    data = asdict(verdict)  # type: ignore[call-overload]
    data["allowed"] = verdict.allowed  # type: ignore[attr-defined]
    return data


def _register_subcommands() -> None:
    """Commands with heavy imports (os-ken, pyroute2) live in their own modules."""
    from sdn_netpol.compiler_cli import compile_cmd, flows_regen_cmd
    from sdn_netpol.controller.cli import controller
    from sdn_netpol.lab.cli import demo, lab

    for command in (compile_cmd, flows_regen_cmd, controller, lab, demo):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
