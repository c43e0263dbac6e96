"""Settings of one controller process (filled by cli.py, read by runtime.py and the parts)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None = None
    watch_timeout: float = 300.0  # server-side timeoutSeconds of one watch request
    read_timeout: float = 90.0  # a watch silent this long (no event, no bookmark) is stalled
    backoff_max: float = 30.0


@dataclass(frozen=True)
class Timing:
    coalesce: float = 0.005  # seconds to let a burst of events land before realizing
    barrier_timeout: float = 30.0  # plus 1 ms per flow mod
    retry_min: float = 0.5  # after a rejected bundle or a failed compile
    retry_max: float = 30.0


@dataclass(frozen=True)
class Config:
    node: str
    source: str  # "kube" or "dir:PATH"
    bridge: str = "br-int"
    ofp_listen: str = "127.0.0.1:6653"
    status_listen: str = "127.0.0.1:9180"
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    dir_poll: float = 0.1
    timing: Timing = Timing()
    kube: KubeOptions = field(default_factory=KubeOptions)
