"""Traffic that keeps running while the lab is changed or broken: a prober and long streams.

`Prober` probes a fixed set of pod pairs over and over (every pair once per round, a round
at least once a second, one selector loop per round as `probe.run_probes` does) and keeps
every outcome with its start and end time. `Stream` is a long-lived TCP conversation with a
pod's echo server: a chunk every `period` seconds, each echo awaited; it records when and
how it was cut. `Timeline` holds which verdict matrices were legitimate when (a change is
legitimate from the moment it is written, its predecessor until the change is realized
everywhere), and `judge` turns samples into false allows, false-deny intervals and rounds
that equal the expected matrix. The chaos runner (chaos.py) uses all of it; a soak can too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

from sdn_netpol.lab import netns, probe
from sdn_netpol.lab.state import LabState, PodState

Pair = tuple[str, str]  # (source pod key, destination pod key)
PROBE_TIMEOUT = 0.8  # one SYN, no retransmission: a round of probes fits in a second
ROUND_EVERY = 1.0


@dataclass(frozen=True)
class Sample:
    round: int
    start: float
    end: float
    pair: Pair
    reachable: bool
    outcome: str


class Prober:
    """Every pair of `pairs` on TCP `port`, a round every ROUND_EVERY s (or back to back
    when a round takes longer), in a thread, until `stop`."""

    def __init__(self, state: LabState, pairs: list[Pair], port: int, timeout: float = PROBE_TIMEOUT) -> None:
        self.pairs, self.port, self.timeout = list(pairs), port, timeout
        self.probes = [probe.Probe(s, d, state.pods[s].netns, state.pods[d].ip) for s, d in self.pairs]
        self.samples: list[Sample] = []
        self.rounds = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.monotonic()
            outcomes = probe.run_probes(self.probes, "TCP", self.port, self.timeout, confirm=False)
            end = time.monotonic()
            with self._lock:
                self.rounds += 1
                for p, outcome in outcomes.items():
                    self.samples.append(Sample(self.rounds, begin, end, (p.source, p.destination),
                                               outcome in probe.REACHABLE, outcome))
            self._stop.wait(max(0.0, begin + ROUND_EVERY - time.monotonic()))

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def rounds_since(self, moment: float) -> int:
        with self._lock:
            return len({s.round for s in self.samples if s.start >= moment})


@dataclass
class Stream:
    """A long TCP conversation from `source` to `destination`:`port` (an echo server)."""

    source: PodState
    destination: PodState
    port: int
    period: float = 0.05
    family: int = 4  # to the destination's address of this IP version
    stall_limit: float = 30.0  # no echo for this long counts as cut
    echoed: int = 0
    cut_at: float | None = None
    error: str = ""
    longest_wait: float = 0.0
    last_echo: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    @property
    def name(self) -> str:
        return f"{self.source.key}->{self.destination.key}:{self.port}"

    def start(self) -> Stream:
        address = self.destination.ip_of(self.family)
        if address is None:
            raise ValueError(f"pod {self.destination.key} has no IPv{self.family} address")
        kind = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        sock = netns.socket_in(self.source.netns, kind, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect((address, self.port))
        sock.settimeout(self.stall_limit)
        self._sock, self.last_echo = sock, time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"stream {self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        n = 0
        while not self._stop.is_set():
            chunk = f"{n:08d}".encode() * 64
            begin = time.monotonic()
            try:
                self._sock.sendall(chunk)
                got = b""
                while len(got) < len(chunk):
                    data = self._sock.recv(len(chunk) - len(got))
                    if not data:
                        raise ConnectionError("closed by the peer")
                    got += data
                if got != chunk:
                    raise ConnectionError("the echo differs")
            except OSError as exc:
                if not self._stop.is_set():
                    self.cut_at, self.error = time.monotonic(), f"chunk {n}: {exc!r}"
                return
            now = time.monotonic()
            self.echoed += len(got)
            self.longest_wait = max(self.longest_wait, now - begin)
            self.last_echo = now
            n += 1
            self._stop.wait(self.period)

    def flowing(self, since: float) -> bool:
        """Still open and an echo came back after `since`."""
        return self.cut_at is None and self.last_echo > since

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(self.stall_limit + 5)
        if self._sock is not None:
            self._sock.close()


@dataclass(frozen=True)
class Epoch:
    """One state of the cluster: its expected verdicts, from when it was written until the
    next change was realized everywhere (None: still current)."""

    index: int
    written: float
    expected: dict[Pair, bool]
    realized: float | None = None


class Timeline:
    """The sequence of expected matrices; thread-safe (the churn writes, judges read)."""

    def __init__(self, expected: dict[Pair, bool], at: float) -> None:
        self._epochs = [Epoch(0, at, expected, at)]
        self._lock = threading.Lock()

    def written(self, expected: dict[Pair, bool], at: float) -> int:
        with self._lock:
            index = len(self._epochs)
            self._epochs.append(Epoch(index, at, expected))
            return index

    def realized(self, index: int, at: float) -> None:
        with self._lock:
            epoch = self._epochs[index]
            self._epochs[index] = Epoch(epoch.index, epoch.written, epoch.expected, at)

    def epochs(self) -> list[Epoch]:
        with self._lock:
            return list(self._epochs)

    def current(self) -> Epoch:
        with self._lock:
            return self._epochs[-1]


def valid(epochs: list[Epoch], start: float, end: float) -> list[Epoch]:
    """The epochs a datapath may enforce during [start, end]: written by `end`, and not older
    than the newest one realized everywhere by `start`."""
    floor = max((e.index for e in epochs if e.realized is not None and e.realized <= start), default=0)
    return [e for e in epochs if e.index >= floor and e.written <= end]


@dataclass
class Outage:
    pair: Pair
    start: float
    end: float | None  # None: still denied at the last sample

    @property
    def seconds(self) -> float:
        return (self.end if self.end is not None else self.start) - self.start


@dataclass
class Judgement:
    false_allows: list[Sample] = field(default_factory=list)
    false_denies: list[Sample] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)

    @property
    def false_deny_seconds(self) -> float:
        return max((o.seconds for o in self.outages), default=0.0)


def judge(samples: list[Sample], epochs: list[Epoch], since: float = 0.0, until: float = float("inf")) -> Judgement:
    """False allows (reachable, every legitimate matrix denies), false denies (unreachable,
    every legitimate matrix allows), and per pair the intervals of consecutive false denies
    (from the first failing probe's start to the next success's start)."""
    result = Judgement()
    open_outage: dict[Pair, Outage] = {}
    for sample in sorted(samples, key=lambda s: (s.start, s.pair)):
        if not since <= sample.start <= until:
            continue
        verdicts = {e.expected.get(sample.pair, False) for e in valid(epochs, sample.start, sample.end)}
        if sample.reachable and verdicts == {False}:
            result.false_allows.append(sample)
        elif not sample.reachable and verdicts == {True}:
            result.false_denies.append(sample)
            if sample.pair not in open_outage:
                open_outage[sample.pair] = Outage(sample.pair, sample.start, None)
                result.outages.append(open_outage[sample.pair])
        elif sample.reachable and sample.pair in open_outage:
            open_outage.pop(sample.pair).end = sample.start
    return result


def exact_rounds(samples: list[Sample], epochs: list[Epoch]) -> list[tuple[float, float]]:
    """(start, end) of every round whose every outcome equals the one matrix legitimate
    for its whole duration (rounds overlapping a change in progress are left out)."""
    by_round: dict[int, list[Sample]] = {}
    for sample in samples:
        by_round.setdefault(sample.round, []).append(sample)
    exact = []
    for items in by_round.values():
        start, end = min(s.start for s in items), max(s.end for s in items)
        legit = valid(epochs, start, end)
        if len(legit) == 1 and all(s.reachable == legit[0].expected.get(s.pair, False) for s in items):
            exact.append((start, end))
    return sorted(exact)
