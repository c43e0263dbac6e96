"""Click options that several command groups take, so that they read the same everywhere."""

from __future__ import annotations

from pathlib import Path

import click

from sdn_netpol.model.objects import PROTOCOLS

PATHS = click.option(
    "-f", "--filename", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
    help="Manifest file (YAML/JSON, multi-document, kind: List) or folder; repeatable.",
)
PROTOCOL = click.option(
    "--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), default="TCP", show_default=True,
    callback=lambda _c, _p, v: v.upper(), help="Transport protocol of the connection.",
)
TEXT_OR_JSON = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                            show_default=True)
PORT = click.option("--port", type=click.IntRange(1, 65535), required=True,
                    help="Destination port number the server listens on.")
FAMILY = click.option(
    "--family", type=click.Choice(["4", "6"]), default=None, callback=lambda _c, _p, v: None if v is None else int(v),
    help="Address family of the connections (IPv4 or IPv6), for dual-stack pods. Default: each pair in the "
         "first family of the destination's addresses that the source also has.",
)
