"""Garbage-collector policy for a process whose heap is mostly one large acyclic snapshot.

Measured with benchmarks/realize.py (10k pods × 1,000 policies, ~19k flows): Python's cyclic
collector spent ~400 ms of each ~950 ms realization re-scanning the cluster state and the
flow tables, although they are acyclic (frozen dataclasses, tuples, dicts) and reference
counting frees them anyway. So after every realization the survivors are frozen
(`gc.freeze`: never scanned again; refcounting still frees them when they die), and when
the controller has been idle for a while, everything is unfrozen for one full collection
that reclaims whatever cycles froze in the meantime (os-ken connections, exceptions).
The young generation is also made larger (20,000 allocations instead of 700): a compile
allocates hundreds of thousands of objects that mostly survive, and each young collection
re-scans them (measured: ~390 → ~345 ms per realization at that size).

Once compiles became incremental (~15 ms per change at that size), the collections that
still fell inside a realization were its latency outliers: a gen-1 or gen-2 pass over what
the realization had allocated so far took 35–140 ms (measured with gc.callbacks). So the
collector is off while a realization builds its snapshot and compiles (`realizing`; not
while it waits for the switch): what that allocates is either freed by reference counting
or frozen right after, and cycles wait for the idle collection.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOG = logging.getLogger(__name__)


THRESHOLDS = (20_000, 20, 50)


class GcPolicy:
    """`full_every`: seconds between full collections when idle; a controller that is never
    idle gets one anyway after `busy_limit` seconds (cycles must not pile up forever)."""

    def __init__(self, full_every: float = 300.0, busy_limit: float = 1800.0) -> None:
        self.full_every = full_every
        self.busy_limit = busy_limit
        self._last_full = time.monotonic()

    def install(self) -> None:
        """Process-wide: called once, when the realizer starts."""
        gc.set_threshold(*THRESHOLDS)

    @contextmanager
    def realizing(self) -> Iterator[None]:
        """No cyclic collection while a realization compiles (it would be its latency outlier)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()

    def realized(self) -> None:
        """After a realization: what survived is the new long-lived state. What is garbage
        is collected first: freezing it would keep it until the next full collection, and a
        controller changed every few seconds is never idle (measured in the 30-minute soak:
        the status server's JSON encoder cycles, ~10 KiB per change per controller, piled up
        for 30 minutes). The collection scans only what is not frozen yet, i.e. what was
        allocated since the last realization, never the frozen state."""
        if time.monotonic() - self._last_full >= self.busy_limit:
            self._full()
        gc.collect()
        gc.freeze()

    def idle(self) -> None:
        """Nothing pending: a good time for the occasional full collection."""
        if time.monotonic() - self._last_full >= self.full_every:
            self._full()

    def _full(self) -> None:
        start = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._last_full = time.monotonic()
        LOG.debug("full collection while idle: %d objects, %.0f ms", found, (self._last_full - start) * 1000)
