"""Settings of one controller process (filled by cli.py, read by runtime.py and the parts)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None = None
    watch_timeout: float = 300.0  # server-side timeoutSeconds of one watch request
    read_timeout: float = 90.0  # a watch silent this long (no event, no bookmark) is stalled
    backoff_max: float = 30.0
    crd_recheck: float = 30.0  # seconds between looks for an admin-policy CRD not installed (404)


@dataclass(frozen=True)
class Timing:
    coalesce: float = 0.005  # seconds to let a burst of events land before realizing
    barrier_timeout: float = 30.0  # plus 1 ms per flow mod
    retry_min: float = 0.5  # after a rejected bundle or a failed compile
    retry_max: float = 30.0


@dataclass(frozen=True)
class DatapathOptions:
    rundir: str | None = None  # ovs-vswitchd's run directory; None: the --ovsdb socket's folder
    mode: str = "auto"  # purge megaflows after each change: auto (affected OVS only), purge, never
    verify_interval: float = 30.0  # seconds between megaflow verifications; 0: never
    verify_limit: int = 2000  # megaflows re-translated per verification


@dataclass(frozen=True)
class AuditOptions:
    log: str | None = None  # JSON-lines file of audited connections; None: packet-ins ignored
    rate: int = 100  # packets/s of the bridge's controller meter (every packet-in of the node)
    max_bytes: int = 10 * 1024 * 1024  # then PATH becomes PATH.1 and a new file starts


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
    datapath: DatapathOptions = DatapathOptions()
    stats_interval: float = 10.0  # seconds between reads of the rule counters; 0: never
    audit: AuditOptions = AuditOptions()

    def ovs_rundir(self) -> str:
        if self.datapath.rundir:
            return self.datapath.rundir
        if self.ovsdb.startswith("unix:"):
            return self.ovsdb[len("unix:"):].rpartition("/")[0] or "/"
        return "/var/run/openvswitch"
