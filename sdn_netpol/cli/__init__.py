"""`sdn-netpol`: the root command (console script `sdn-netpol=sdn_netpol.cli:main`).

One module per command group, each importing only what its commands need:

    offline.py     validate, matrix, explain        manifests → policy engine, no switch
    flows.py       compile, flows-regen             manifests → flow tables (flowtext.py, golden.py)
    controller.py  controller                       the per-node OpenFlow controller
    live.py        trace, flows                     a live node's switch, mapped to policies and rules
    lab.py         lab …, demo                      a cluster on this machine (lab trace/flows/stats too)
    node.py        node setup, node install-cni     a real node's bridge and CNI plugin (deploy/)
    debugview.py   text of the debugging commands (trace steps, flows by table, stats tables)
    render.py      rich rendering shared by the groups (the reachability matrix)
    options.py     click options shared by the groups

Subcommands are registered by name and imported when used (`_LazyGroup`), for two reasons:
`python -m sdn_netpol.cli.controller` (how the lab and the tests start a controller) imports
this package first, and it must not import the module it is about to run, nor the lab;
and `sdn-netpol validate` need not import the lab or the controller. This package imports
nothing of sdn_netpol, so the command modules never import back into it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

COMMANDS: Mapping[str, str] = {
    "validate": "sdn_netpol.cli.offline:validate",
    "matrix": "sdn_netpol.cli.offline:matrix",
    "explain": "sdn_netpol.cli.offline:explain_cmd",
    "compile": "sdn_netpol.cli.flows:compile_cmd",
    "flows-regen": "sdn_netpol.cli.flows:flows_regen_cmd",
    "controller": "sdn_netpol.cli.controller:controller",
    "trace": "sdn_netpol.cli.live:trace_cmd",
    "flows": "sdn_netpol.cli.live:flows_cmd",
    "lab": "sdn_netpol.cli.lab:lab",
    "demo": "sdn_netpol.cli.lab:demo",
    "node": "sdn_netpol.cli.node:node",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are `module:attribute` names, imported on first use."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kubernetes NetworkPolicy for Open vSwitch: validate, matrix, explain, compile, run."""
