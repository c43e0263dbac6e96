"""Real-packet probes, all at once, from this process.

Each probe's socket is opened inside its source pod's namespace (a socket keeps the
namespace it was born in) and every probe of a matrix runs in one selector loop: a TCP
connect, a UDP echo (resent until answered), or an SCTP INIT answered by INIT-ACK (over
one raw socket per source). A denied pair costs its timeout concurrently with all the
others, and is confirmed by a second try, so a 9×9 matrix takes two timeouts (~3 s) when
something is denied and ~0.05 s when nothing is.

At most WINDOW probes are in flight (a sliding window, each probe with its own clock), a
bound on descriptors and on the burst of first packets the userspace datapath must upcall;
measured on a 5 × 20 lab, windows from 1,000 to 10,000 give the same exact 100×100
matrices in 3–4 s. (A 100-pod lab needs room in the kernel's ARP table: see hostlimits.)

IPv4 or IPv6: each probe's family is its destination address's (a lab probes one family at
a time, `lab probe --family`).

Outcomes: `connected` (handshake or echo), `refused` (TCP RST, ICMP port unreachable,
SCTP ABORT: the packet reached the pod and nothing listens), `timeout` (dropped on the way:
what a policy does), `error`. Both `connected` and `refused` count as reachable.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import resource
import selectors
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sdn_netpol.lab import netns, sctp

TIMEOUT = 1.5  # seconds; TCP gets one SYN retransmission (at 1 s) inside it
RESEND = 0.5  # UDP datagram / SCTP INIT resent every RESEND until answered
WINDOW = 2000  # probes in flight at once
TICK = 0.02  # how often deadlines and resends are looked at
REACHABLE = ("connected", "refused")


@dataclass(frozen=True)
class Probe:
    source: str  # a name for the result ("ns/pod" or an external address)
    destination: str
    src_netns: str
    dst_ip: str
    src_ip: str | None = None  # bind to this source (the external host has several)


@dataclass
class _Flight:
    probe: Probe
    sock: socket.socket | None = None
    token: bytes = b""
    sport: int = 0
    tag: int = 0
    outcome: str | None = None
    deadline: float = 0.0
    resend_at: float = 0.0


@dataclass
class _Run:
    protocol: str
    port: int
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    flights: list[_Flight] = field(default_factory=list)
    in_flight: list[_Flight] = field(default_factory=list)
    raw: dict[tuple[str, str | None, int], socket.socket] = field(default_factory=dict)
    by_sctp: dict[tuple[int, str, int], _Flight] = field(default_factory=dict)


def run_probes(probes: Iterable[Probe], protocol: str, port: int, timeout: float = TIMEOUT,
               window: int = WINDOW, confirm: bool = True,
               confirm_timeout: float | None = None) -> dict[Probe, str]:
    """Outcome of every probe; up to `window` of them run concurrently.

    With `confirm`, every probe that got no answer is tried once more, with a new socket
    (for `confirm_timeout`, default `timeout`), and only a second silence counts: a policy
    drop is certain, a packet lost in a burst (the first probe of a big fresh lab resolves
    thousands of neighbours and megaflows at once) is not. Costs one more timeout when
    something is denied.
    """
    _raise_fd_limit()
    outcomes = _pass(list(probes), protocol.upper(), port, timeout, window)
    if confirm:
        again = [p for p, o in outcomes.items() if o in ("timeout", "error")]
        if again:
            outcomes.update(_pass(again, protocol.upper(), port, confirm_timeout or timeout, window))
    return outcomes


def _pass(todo: list[Probe], protocol: str, port: int, timeout: float, window: int) -> dict[Probe, str]:
    run = _Run(protocol, port)
    try:
        _loop(run, todo, timeout, window)
    finally:
        _close(run)
    return {f.probe: f.outcome or "timeout" for f in run.flights}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _launch(run: _Run, probe: Probe, timeout: float) -> None:
    flight = _Flight(probe)
    run.flights.append(flight)
    now = time.monotonic()
    flight.deadline, flight.resend_at = now + timeout, now + RESEND
    try:
        with netns.entered(probe.src_netns):  # the socket is born in the source pod
            if run.protocol == "TCP":
                _start_tcp(run, flight)
            elif run.protocol == "UDP":
                _start_udp(run, flight)
            else:
                _start_sctp(run, flight)
    except OSError as exc:
        flight.outcome = "refused" if exc.errno == errno.ECONNREFUSED else "error"
        _finish(run, flight)
        return
    run.in_flight.append(flight)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _open(probe: Probe, kind: int, proto: int = 0) -> socket.socket:
    """Called with this thread inside the probe's source namespace (see `_launch`)."""
    sock = socket.socket(_family(probe.dst_ip), kind, proto)
    if probe.src_ip:
        sock.bind((probe.src_ip, 0))
    sock.setblocking(False)
    return sock


def _start_tcp(run: _Run, flight: _Flight) -> None:
    sock = flight.sock = _open(flight.probe, socket.SOCK_STREAM)
    code = sock.connect_ex((flight.probe.dst_ip, run.port))
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))
    run.selector.register(sock, selectors.EVENT_WRITE, flight)


def _start_udp(run: _Run, flight: _Flight) -> None:
    sock = flight.sock = _open(flight.probe, socket.SOCK_DGRAM)
    sock.connect((flight.probe.dst_ip, run.port))
    flight.token = os.urandom(8)
    sock.send(flight.token)
    run.selector.register(sock, selectors.EVENT_READ, flight)


def _start_sctp(run: _Run, flight: _Flight) -> None:
    probe = flight.probe
    raw_key = (probe.src_netns, probe.src_ip, _family(probe.dst_ip))
    if raw_key not in run.raw:
        raw = _open(probe, socket.SOCK_RAW, sctp.IPPROTO_SCTP)
        run.raw[raw_key] = raw
        run.selector.register(raw, selectors.EVENT_READ, raw_key)
    dst = str(ipaddress.ip_address(probe.dst_ip))  # as sctp.parse_raw writes a reply's source
    while True:  # a source port unique per (source, destination): replies map back
        flight.sport = random.randint(33000, 60999)
        if (flight.sport, dst, id(run.raw[raw_key])) not in run.by_sctp:
            break
    flight.tag = random.randint(1, 0xFFFFFFFF)
    run.by_sctp[(flight.sport, dst, id(run.raw[raw_key]))] = flight
    _send_init(run, flight)


def _send_init(run: _Run, flight: _Flight) -> None:
    raw = run.raw[(flight.probe.src_netns, flight.probe.src_ip, _family(flight.probe.dst_ip))]
    with contextlib.suppress(OSError):
        raw.sendto(sctp.init(flight.sport, run.port, flight.tag), (flight.probe.dst_ip, 0))


def _loop(run: _Run, todo: list[Probe], timeout: float, window: int) -> None:
    pending = iter(todo)
    exhausted = False
    next_tick = time.monotonic()
    while True:
        while not exhausted and len(run.in_flight) < window:
            probe = next(pending, None)
            if probe is None:
                exhausted = True
            else:
                _launch(run, probe, timeout)
        if exhausted and not run.in_flight:
            return
        for key, _ in run.selector.select(max(0.0, next_tick - time.monotonic())):
            if isinstance(key.data, _Flight):
                _on_socket(run, key.data)
            else:
                _on_raw(run, key.fileobj)  # type: ignore[arg-type]
        now = time.monotonic()
        if now >= next_tick:
            _tick(run, now)
            next_tick = now + TICK


def _tick(run: _Run, now: float) -> None:
    """Expire what is past its deadline, resend what is due, forget what is done."""
    still = []
    for flight in run.in_flight:
        if flight.outcome is None and now >= flight.deadline:
            flight.outcome = "timeout"
            _finish(run, flight)
        if flight.outcome is not None:
            continue
        if now >= flight.resend_at:
            _resend(run, flight)
            flight.resend_at += RESEND
        still.append(flight)
    run.in_flight = still


def _resend(run: _Run, flight: _Flight) -> None:
    if run.protocol == "UDP" and flight.sock is not None:
        with contextlib.suppress(OSError):
            flight.sock.send(flight.token)
    elif run.protocol == "SCTP":
        _send_init(run, flight)


def _finish(run: _Run, flight: _Flight) -> None:
    """Done (whatever the outcome): its socket goes, its window slot frees at the next tick."""
    if flight.sock is not None:
        with contextlib.suppress(KeyError, ValueError):
            run.selector.unregister(flight.sock)
        flight.sock.close()
        flight.sock = None


def _on_socket(run: _Run, flight: _Flight) -> None:
    sock = flight.sock
    assert sock is not None
    if run.protocol == "TCP":
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        flight.outcome = "connected" if code == 0 else "refused" if code == errno.ECONNREFUSED else "error"
    else:
        try:
            data = sock.recv(64)
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            flight.outcome = "refused"
        except OSError:
            flight.outcome = "error"
        else:
            if data == flight.token:
                flight.outcome = "connected"
    if flight.outcome is not None:
        _finish(run, flight)


def _on_raw(run: _Run, raw: socket.socket) -> None:
    while True:
        try:
            datagram, peer = raw.recvfrom(65536)
        except (BlockingIOError, OSError):
            return
        pkt = sctp.parse_raw(raw.family, datagram, peer[0])
        if pkt is None or pkt.sport != run.port:
            continue
        flight = run.by_sctp.get((pkt.dport, pkt.src, id(raw)))
        if flight is None or flight.outcome is not None or pkt.tag != flight.tag:
            continue
        if pkt.first(sctp.INIT_ACK) is not None:
            flight.outcome = "connected"
            with contextlib.suppress(OSError):  # tidy: the server holds no state anyway
                raw.sendto(sctp.abort(flight.sport, run.port, flight.tag, reflected=False), (pkt.src, 0))
        elif pkt.first(sctp.ABORT) is not None:
            flight.outcome = "refused"


def _close(run: _Run) -> None:
    for flight in run.flights:
        _finish(run, flight)
    for raw in run.raw.values():
        raw.close()
    run.selector.close()
