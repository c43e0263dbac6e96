"""Make "realized" mean "enforced" below OpenFlow: the datapath's cached megaflows.

After a bundle is acknowledged, ovs-vswitchd still forwards with megaflows translated from
the old tables until its revalidators correct them, and on the userspace datapath of the
OVS releases listed in sdn_netpol/ovs/datapath.py they can correct the *wrong* megaflow,
leaving a stale drop or allow behind indefinitely (docs/reliability.md).  So:

* :meth:`DatapathGuard.settle` runs after every bundle, before the realized generation
  advances: on an affected switch it purges the megaflows (``revalidator/purge``); the
  next packets are translated from the new tables.  A purge that fails (no vswitchd
  control socket, a timeout) raises :class:`DatapathUnsettled`: the realizer reports it
  and retries with back-off, never touching the OpenFlow flows because of it.
* :class:`DatapathVerifier` re-translates the megaflows on a bounded interval and
  publishes how many contradict the tables (``sdn_netpol_datapath_stale_flows``, /status);
  a contradiction that survives a revalidator round is repaired with a purge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.worker import Worker
from sdn_netpol.ovs import datapath
from sdn_netpol.ovs.instance import OvsError, OvsInstance
from sdn_netpol.ovs.trace import Tracer

LOG = logging.getLogger(__name__)
MODES = ("auto", "purge", "never")


class DatapathUnsettled(Exception):
    """The megaflows could not be brought in line with the tables (yet)."""


@dataclass
class DatapathState:
    """What /status shows under "datapath"; written under the guard's lock."""

    mode: str
    purging: bool | None = None  # resolved from the mode (auto: version and datapath type)
    ovs_version: str | None = None
    datapath_type: str | None = None  # of the bridge: netdev (userspace), system (kernel)
    purges: int = 0
    last_purge_seconds: float | None = None
    last_verify: dict[str, Any] | None = None
    repairs: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "purge_after_change": self.purging, "ovs_version": self.ovs_version,
                "datapath_type": self.datapath_type,
                "purges": self.purges, "last_purge_seconds": self.last_purge_seconds,
                "last_verify": self.last_verify, "repairs": self.repairs, "error": self.error}


@dataclass
class DatapathGuard:
    """One per controller: knows how to reach ovs-vswitchd and whether to purge."""

    rundir: Path
    mode: str = "auto"
    bridge: str = "br-int"
    metrics: Metrics | None = None
    timeout: float = 10.0
    state: DatapathState = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"datapath mode {self.mode!r}: use one of {', '.join(MODES)}")
        self.state = DatapathState(self.mode)

    def tracer(self) -> Tracer:
        return Tracer(OvsInstance(self.rundir), self.timeout)

    def settle(self) -> None:
        """After a bundle: leave no megaflow that the new tables contradict."""
        with self._lock, self.tracer() as unixctl:
            try:
                if self._must_purge(unixctl):
                    self._purge(unixctl)
            except (OvsError, OSError, ValueError) as exc:
                self._failed("purge", exc)
            self.state.error = None

    def repair(self, unixctl: Tracer) -> None:
        with self._lock:
            try:
                self._purge(unixctl)
            except (OvsError, OSError) as exc:
                self._failed("repair", exc)
            self.state.repairs += 1
            if self.metrics:
                self.metrics.datapath_repairs.inc()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return self.state.to_json()

    def record_verify(self, report: datapath.VerifyReport, seconds: float) -> None:
        with self._lock:
            self.state.last_verify = {"at": time.time(), "seconds": round(seconds, 3), "checked": report.checked,
                                      "unverifiable": report.unverifiable, "stale": len(report.stale),
                                      "examples": [s.describe() for s in report.stale[:5]]}
        if self.metrics:
            self.metrics.datapath_stale.set(len(report.stale))
            self.metrics.datapath_verified.set(report.checked)

    def datapath_type(self, unixctl: Tracer) -> str:
        """The bridge's datapath type (resolved once per vswitchd, again after an error)."""
        if self.state.datapath_type is None:
            found = datapath.bridge_datapath_type(unixctl.call("dpif/show"), self.bridge)
            if found is None:
                raise ValueError(f"bridge {self.bridge} is in no datapath of ovs-vswitchd")
            self.state.datapath_type = found
        return self.state.datapath_type

    def _must_purge(self, unixctl: Tracer) -> bool:
        if self.mode != "auto":
            self.state.purging = self.mode == "purge"
            return self.state.purging
        if self.state.purging is None:  # resolved once per vswitchd (re-resolved after an error)
            version = datapath.version(unixctl)
            self.state.ovs_version = ".".join(map(str, version))
            kind = self.datapath_type(unixctl)
            self.state.purging = datapath.modifies_wrong_megaflow(version, {kind})
            LOG.info("Open vSwitch %s, %s datapath: %s megaflows after each change", self.state.ovs_version,
                     kind, "purging" if self.state.purging else "not purging")
        return self.state.purging

    def _purge(self, unixctl: Tracer) -> None:
        began = time.monotonic()
        datapath.purge(unixctl)
        seconds = time.monotonic() - began
        self.state.purges += 1
        self.state.last_purge_seconds = round(seconds, 4)
        if self.metrics:
            self.metrics.datapath_purges.labels(result="ok").inc()
            self.metrics.datapath_purge_seconds.observe(seconds)

    def _failed(self, what: str, exc: Exception) -> None:
        self.state.error = f"{what} failed: {exc}"
        if self.mode == "auto":
            self.state.purging = None  # vswitchd may have been restarted or upgraded
        self.state.datapath_type = None
        if self.metrics:
            self.metrics.datapath_purges.labels(result="failed").inc()
        raise DatapathUnsettled(self.state.error) from exc


class DatapathVerifier(Worker):
    """Every `interval` s: re-translate up to `limit` megaflows; repair what stays stale.

    A flow can look stale for a moment after any table change (the revalidators have not
    run yet), so candidates are checked again after ``revalidator/wait``, and a sample
    taken while a realization happened (`generation` moved) is thrown away.
    """

    thread_name = "datapath-verifier"

    def __init__(self, guard: DatapathGuard, generation: Callable[[], int], interval: float = 30.0,
                 limit: int = 2000) -> None:
        super().__init__()
        self.guard = guard
        self.generation = generation
        self.interval = interval
        self.limit = limit

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OvsError, OSError, ValueError) as exc:
                LOG.warning("datapath verification failed: %s", exc)
            except DatapathUnsettled as exc:
                LOG.error("%s", exc)

    def sample(self) -> datapath.VerifyReport | None:
        before = self.generation()
        began = time.monotonic()
        with self.guard.tracer() as unixctl:
            kind = self.guard.datapath_type(unixctl)
            flows = datapath.dump(unixctl, kind)[: self.limit]
            report = datapath.verify(unixctl, kind, flows)
            if report.stale:
                unixctl.call("revalidator/wait")
                report = datapath.recheck(unixctl, report, kind)
            if self.generation() != before:
                return None
            self.guard.record_verify(report, time.monotonic() - began)
            if report.stale:
                LOG.error("%d megaflow(s) contradict the tables; purging: %s", len(report.stale),
                          "; ".join(s.describe() for s in report.stale[:3]))
                self.guard.repair(unixctl)
        return report
