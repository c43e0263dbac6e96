"""Frames on a wire, as the security and IPv6 tests see them: what an interface in a netns
receives (never what it sends), frames put on it as a process there could, and waits that
end when a legitimate frame sent after the forged ones arrives."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

from sdn_netpol.lab import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
DEADLINE = 30.0  # for anything that must happen on a busy 2-core machine
SETTLE = 0.5  # after an awaited frame, for stragglers that must not arrive


@contextlib.contextmanager
def sniff(netns_name: str, ifname: str = "eth0") -> Iterator[socket.socket]:
    """Every frame `ifname` in `netns_name` receives (not the ones it sends)."""
    sock = netns.socket_in(netns_name, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, 0))
        sock.settimeout(0.1)
        yield sock
    finally:
        sock.close()


def send_frames(netns_name: str, *frames: Any, ifname: str = "eth0") -> None:
    """Frames (scapy packets) put on `ifname` as a process in `netns_name` could."""
    sock = netns.socket_in(netns_name, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(bytes(frame))


def collect(sock: socket.socket, markers: list[bytes], awaited: bytes | None = None,
            deadline: float = DEADLINE) -> dict[bytes, list[bytes]]:
    """Frames carrying each marker. With `awaited`: until that one arrives (then SETTLE more),
    failing if it does not within `deadline`; without: for SETTLE seconds."""
    found: dict[bytes, list[bytes]] = {m: [] for m in [*markers, *([awaited] if awaited else [])]}
    end = time.monotonic() + (deadline if awaited else SETTLE)
    settled = False
    while time.monotonic() < end:
        try:
            frame, address = sock.recvfrom(65536)
        except TimeoutError:
            continue
        if address[2] == PACKET_OUTGOING:
            continue
        for marker in found:
            if marker in frame:
                found[marker].append(frame)
        if awaited and found[awaited] and not settled:
            settled, end = True, time.monotonic() + SETTLE
    if awaited:
        assert found[awaited], f"the legitimate frame {awaited!r} did not arrive within {deadline:.0f} s"
    return found


def drain(sock: socket.socket) -> list[bytes]:
    """What the socket has received so far (it was open during the whole exchange, and the
    caller has already awaited a later frame)."""
    frames = []
    while True:
        try:
            frame, address = sock.recvfrom(65536)
        except TimeoutError:
            return frames
        if address[2] != PACKET_OUTGOING:
            frames.append(frame)
