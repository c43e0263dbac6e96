"""Per-rule and isolation-drop counters on /metrics, sampled from the switch on an interval.

A scrape never touches the switch: it reads the last sample. The sampler dumps only the
RULE and ISOLATION flows (cookie-filtered on the switch, through the bridge's management
socket in the OVS run directory) every ``--stats-interval`` seconds and names them with
the cluster state the realizer last installed (debug/stats.py does the counting).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sdn_netpol.controller.worker import Worker
from sdn_netpol.debug import stats
from sdn_netpol.debug.names import Names
from sdn_netpol.ovs.dumpflows import DumpedFlow, parse_dump_flows
from sdn_netpol.ovs.instance import OvsError, OvsInstance
from sdn_netpol.policy.state import ClusterState

LOG = logging.getLogger(__name__)


class RuleStatsSampler(Worker, Collector):
    thread_name = "rule-stats"

    def __init__(self, rundir: Path, bridge: str, node: str, cluster: Callable[[], ClusterState | None],
                 interval: float = 10.0) -> None:
        super().__init__()
        self.ovs = OvsInstance(rundir)
        self.bridge, self.node, self.cluster, self.interval = bridge, node, cluster, interval
        self.latest: stats.Stats | None = None
        self.sample_seconds: float | None = None
        self._names: tuple[ClusterState, Names] | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OvsError, OSError) as exc:
                LOG.warning("rule statistics not read: %s", exc)

    def sample(self) -> stats.Stats | None:
        state = self.cluster()
        if state is None:
            return None
        began = time.monotonic()
        if self._names is None or self._names[0] is not state:
            self._names = (state, Names.of(state))
        sample = stats.read(self.node, self._dump, self._names[1])
        with self._lock:
            self.latest, self.sample_seconds = sample, time.monotonic() - began
        return sample

    def _dump(self, cookie_filter: str) -> list[DumpedFlow]:
        return parse_dump_flows(self.ovs.ofctl("--no-names", "dump-flows", self.bridge, cookie_filter))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        with self._lock:
            latest, seconds = self.latest, self.sample_seconds
        packets = CounterMetricFamily("sdn_netpol_rule_packets", "Packets a policy rule admitted (flow stats)",
                                      labels=["namespace", "policy", "direction", "rule"])
        octets = CounterMetricFamily("sdn_netpol_rule_bytes", "Bytes a policy rule admitted (flow stats)",
                                     labels=["namespace", "policy", "direction", "rule"])
        drops = CounterMetricFamily("sdn_netpol_isolation_drops", "Packets dropped because no rule admitted them "
                                    "to or from an isolated pod", labels=["namespace", "pod", "direction"])
        for rule in latest.rules if latest else ():
            labels = [rule.namespace, rule.policy, rule.direction.lower(), str(rule.rule)]
            packets.add_metric(labels, rule.packets)
            octets.add_metric(labels, rule.bytes)
        for drop in latest.isolation_drops if latest else ():
            drops.add_metric([drop.namespace, drop.pod, drop.direction.lower()], drop.packets)
        yield from (packets, octets, drops)
        took = GaugeMetricFamily("sdn_netpol_rule_stats_sample_seconds", "Time of the last statistics sample")
        if seconds is not None:
            took.add_metric([], seconds)
        yield took
