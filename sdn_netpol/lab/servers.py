"""The one long-running process of a lab pod: serves every containerPort of the pod.

    ip netns exec POD python -m sdn_netpol.lab.servers --lab=WORKDIR --pod NS/NAME \\
        --serve TCP:80 --serve UDP:80 --serve SCTP:80 ...

TCP: accept and echo (a long stream can be checked end to end); UDP: echo each datagram;
SCTP: answered in user space over raw sockets (see `sctp.py`). Every port is served on IPv4
and IPv6 alike: TCP and UDP on one dual-stack socket (`::`, IPV6_V6ONLY off), SCTP on one raw
socket per family; where the pod's namespace has no IPv6, on IPv4 only. One process and one
selector loop per pod keeps a 100-pod lab at ~100 small processes; standard library only
so that it starts in tens of milliseconds. Prints `ready` once every socket is bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from sdn_netpol.lab import sctp

Handler = Callable[[socket.socket], None]


class Server:
    def __init__(self, ports: list[tuple[str, int]]) -> None:
        self.selector = selectors.DefaultSelector()
        self.sctp_ports = frozenset(p for proto, p in ports if proto == "SCTP")
        for proto, port in ports:
            if proto == "TCP":
                self._listen_tcp(port)
            elif proto == "UDP":
                self._bind_udp(port)
        if self.sctp_ports:
            for family in (socket.AF_INET, socket.AF_INET6) if socket.has_ipv6 and _ipv6() else (socket.AF_INET,):
                raw = socket.socket(family, socket.SOCK_RAW, sctp.IPPROTO_SCTP)
                raw.setblocking(False)
                self.selector.register(raw, selectors.EVENT_READ, self._on_sctp)

    @staticmethod
    def _bound(kind: int, port: int) -> socket.socket:
        """Bound to `port` on every address of either family (IPv4 only without IPv6)."""
        if _ipv6():
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address: tuple[str, int] = ("::", port)
        else:
            sock, address = socket.socket(socket.AF_INET, kind), ("0.0.0.0", port)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    def _listen_tcp(self, port: int) -> None:
        sock = self._bound(socket.SOCK_STREAM, port)
        sock.listen(256)
        self.selector.register(sock, selectors.EVENT_READ, self._on_accept)

    def _bind_udp(self, port: int) -> None:
        self.selector.register(self._bound(socket.SOCK_DGRAM, port), selectors.EVENT_READ, self._on_udp)

    def _on_accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
            conn, _ = listener.accept()
            conn.setblocking(True)
            conn.settimeout(2.0)  # a peer that stops reading must not freeze the pod's server
            self.selector.register(conn, selectors.EVENT_READ, self._on_data)

    def _on_data(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            if data:
                conn.sendall(data)
                return
        except OSError:
            pass
        self.selector.unregister(conn)
        conn.close()

    def _on_udp(self, sock: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            data, peer = sock.recvfrom(65536)
            sock.sendto(data, peer)

    def _on_sctp(self, raw: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            datagram, peer = raw.recvfrom(65536)
            pkt = sctp.parse_raw(raw.family, datagram, peer[0])
            if pkt is None:
                return
            reply = sctp.reply_to(pkt, self.sctp_ports)
            if reply is not None:
                raw.sendto(reply, (pkt.src, 0))

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                key.data(key.fileobj)


def _ipv6() -> bool:
    """This namespace can have IPv6 sockets (the kernel has it, and not disabled here)."""
    try:
        return Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() == "0"
    except OSError:
        return False


def parse_serve(text: str) -> tuple[str, int]:
    proto, _, port = text.partition(":")
    if proto.upper() not in ("TCP", "UDP", "SCTP") or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PROTO:PORT")
    return proto.upper(), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", required=True, help="the lab's workdir (a marker for cleanup)")
    parser.add_argument("--pod", required=True)
    parser.add_argument("--serve", action="append", type=parse_serve, default=[])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = Server(args.serve)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the lab closes its end of the pipe after `ready`
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
