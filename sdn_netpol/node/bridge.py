"""The integration bridge every node needs, as `ovs-vsctl` arguments.

- `fail_mode=secure`: a controller outage keeps the installed flows and never turns the
  bridge into a learning switch (an open switch would bypass every policy).
- `disable-in-band`: no hidden flows of OVS's own among the pipeline's.
- The tunnel port with flow-based `remote_ip`/`key`: the compiler sets both per packet.
- The controller target is set only when it differs from the current one: setting it wipes
  the flow table (../shared/LAB-NOTES.md), so a restarted node agent must not set it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROTOCOLS = "OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15"
TUNNEL_TYPES = ("vxlan", "geneve")
CONTROLLER_BACKOFF_MS = 1000  # reconnect within a second when a controller restarts


@dataclass(frozen=True)
class BridgeSpec:
    name: str = "br-int"
    tunnel: str = "vxlan"  # vxlan | geneve
    tunnel_port: str = "tun0"
    datapath_type: str = ""  # "" (the kernel's "system") or "netdev"
    datapath_id: int | None = None

    def __post_init__(self) -> None:
        if self.tunnel not in TUNNEL_TYPES:
            raise ValueError(f"tunnel: {self.tunnel!r} is not one of {', '.join(TUNNEL_TYPES)}")


def bridge_args(spec: BridgeSpec) -> list[str]:
    """`ovs-vsctl` arguments that create the bridge and its tunnel, or make an existing
    one conform (idempotent: `--may-exist`, then `set`)."""
    settings = ["fail_mode=secure", f"protocols={PROTOCOLS}", "other_config:disable-in-band=true"]
    if spec.datapath_type:
        settings.append(f"datapath_type={spec.datapath_type}")
    if spec.datapath_id is not None:
        settings.append(f"other_config:datapath-id={spec.datapath_id:016x}")
    return [
        "--", "--may-exist", "add-br", spec.name, "--", "set", "Bridge", spec.name, *settings,
        "--", "--may-exist", "add-port", spec.name, spec.tunnel_port,
        "--", "set", "Interface", spec.tunnel_port, f"type={spec.tunnel}", "options:remote_ip=flow",
        "options:key=flow",
    ]


def controller_args(bridge: str, target: str, current: Sequence[str]) -> list[str]:
    """`set-controller` only when `current` (the bridge's targets now) differs."""
    if list(current) == [target]:
        return []
    return ["--", "set-controller", bridge, target,
            "--", "set", "Controller", bridge, f"max_backoff={CONTROLLER_BACKOFF_MS}"]
