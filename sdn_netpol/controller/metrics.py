"""Prometheus metrics of one controller process, in a registry of its own.

A private registry (not the client's global one) so that tests and benchmarks can build
several controllers' worth of metrics in one process, and /metrics shows only ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.flows = Gauge("sdn_netpol_flows", "Flows installed on the bridge, per table", ["table"], registry=r)
        self.flow_mods = Counter("sdn_netpol_flow_mods_sent", "Flow mods sent to the switch (inside bundles)",
                                 ["command"], registry=r)
        self.bundles = Counter("sdn_netpol_bundles", "Bundles committed or failed", ["result"], registry=r)
        self.realization = Histogram("sdn_netpol_realization_seconds",
                                     "From a change (source or port) to the barrier that acknowledges it",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.realized_generation = Gauge("sdn_netpol_realized_generation",
                                         "Source generation the switch holds", registry=r)
        self.watch_restarts = Counter("sdn_netpol_watch_restarts", "Kubernetes watches re-opened, by reason",
                                      ["resource", "reason"], registry=r)
        self.invalid_objects = Gauge("sdn_netpol_invalid_objects", "Objects whose latest version is invalid",
                                     registry=r)
        self.switch_connected = Gauge("sdn_netpol_switch_connected", "1 while the bridge is connected and synced",
                                      registry=r)
        self.switch_connects = Counter("sdn_netpol_switch_connects", "OpenFlow connections from the bridge",
                                       registry=r)
        self.datapath_purges = Counter("sdn_netpol_datapath_purges", "Megaflow purges after a change, by result",
                                       ["result"], registry=r)
        self.datapath_purge_seconds = Histogram("sdn_netpol_datapath_purge_seconds",
                                                "Time of one revalidator/purge", buckets=LATENCY_BUCKETS, registry=r)
        self.datapath_stale = Gauge("sdn_netpol_datapath_stale_flows",
                                    "Megaflows the tables contradicted at the last verification", registry=r)
        self.datapath_verified = Gauge("sdn_netpol_datapath_verified_flows",
                                       "Megaflows re-translated at the last verification", registry=r)
        self.datapath_repairs = Counter("sdn_netpol_datapath_repairs",
                                        "Purges because a verification found stale megaflows", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def set_flow_counts(self, by_table: dict[int, int]) -> None:
        """Replace the per-table gauge: tables that became empty disappear from it."""
        self.flows.clear()
        for table, count in sorted(by_table.items()):
            self.flows.labels(table=str(table)).set(count)
