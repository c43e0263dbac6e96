"""Just enough SCTP (RFC 9260) to open an association in user space over raw IP sockets.

The kernel here has no SCTP (CONFIG_IP_SCTP unset), so servers answer INIT with INIT-ACK
(and COOKIE-ECHO, DATA, SHUTDOWN) themselves and probes count an INIT-ACK as "connected".
Hand-built packets with CRC32c rather than scapy: the per-pod servers must start fast and
stay small (scapy costs ~1 s and ~50 MiB per process). Standard library only.

While a raw socket for protocol 132 is open in a namespace the kernel delivers SCTP to it
and stays quiet; without one it answers SCTP with ICMP protocol-unreachable (which a probe
would then see as nothing at all).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

IPPROTO_SCTP = 132
DATA, INIT, INIT_ACK, SACK, ABORT, SHUTDOWN, SHUTDOWN_ACK = 0, 1, 2, 3, 6, 7, 8
COOKIE_ECHO, COOKIE_ACK, SHUTDOWN_COMPLETE = 10, 11, 14
STATE_COOKIE = 7  # INIT-ACK parameter type
FLAG_T = 0x01  # ABORT/SHUTDOWN-COMPLETE: the tag is the reflected one


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Chunk:
    kind: int
    flags: int
    value: bytes


@dataclass(frozen=True)
class Packet:
    src: str  # IP source address (from the IP header on receive)
    sport: int
    dport: int
    tag: int
    chunks: tuple[Chunk, ...]

    def first(self, kind: int) -> Chunk | None:
        return next((c for c in self.chunks if c.kind == kind), None)


def chunk(kind: int, value: bytes = b"", flags: int = 0) -> bytes:
    raw = struct.pack("!BBH", kind, flags, 4 + len(value)) + value
    return raw + b"\0" * (-len(raw) % 4)


def packet(sport: int, dport: int, tag: int, *chunks: bytes) -> bytes:
    """Common header + chunks with the CRC32c in place (little-endian, as RFC 9260 says)."""
    body = struct.pack("!HHII", sport, dport, tag, 0) + b"".join(chunks)
    return body[:8] + struct.pack("<I", crc32c(body)) + body[12:]


def init(sport: int, dport: int, my_tag: int, tsn: int = 1) -> bytes:
    return packet(sport, dport, 0, chunk(INIT, struct.pack("!IIHHI", my_tag, 65535, 1, 1, tsn)))


def init_ack(sport: int, dport: int, peer_tag: int, my_tag: int, cookie: bytes) -> bytes:
    param = struct.pack("!HH", STATE_COOKIE, 4 + len(cookie)) + cookie
    param += b"\0" * (-len(param) % 4)
    value = struct.pack("!IIHHI", my_tag, 65535, 1, 1, 100) + param
    return packet(sport, dport, peer_tag, chunk(INIT_ACK, value))


def abort(sport: int, dport: int, tag: int, reflected: bool) -> bytes:
    return packet(sport, dport, tag, chunk(ABORT, flags=FLAG_T if reflected else 0))


def init_tag(value: bytes) -> int:
    """The Initiate Tag of an INIT or INIT-ACK chunk value."""
    return int(struct.unpack("!I", value[:4])[0]) if len(value) >= 4 else 0


def parse_ip(datagram: bytes) -> Packet | None:
    """A raw-socket read (IPv4 header included) → Packet; None if not well-formed SCTP."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4 or datagram[9] != IPPROTO_SCTP:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    src = ".".join(str(b) for b in datagram[12:16])
    return parse_sctp(src, datagram[ihl:])


def parse_raw(family: int, datagram: bytes, peer: str) -> Packet | None:
    """A read from a raw SCTP socket of `family`: an IPv4 one hands over the IP header, an
    IPv6 one only the payload, its source in `peer` (recvfrom's address)."""
    if family == socket.AF_INET6:
        return parse_sctp(str(ipaddress.ip_address(peer.split("%")[0])), datagram)
    return parse_ip(datagram)


def parse_sctp(src: str, raw: bytes) -> Packet | None:
    if len(raw) < 12:
        return None
    sport, dport, tag = struct.unpack("!HHI", raw[:8])
    chunks = []
    offset = 12
    while offset + 4 <= len(raw):
        kind, flags, length = struct.unpack("!BBH", raw[offset:offset + 4])
        if length < 4:
            break
        chunks.append(Chunk(kind, flags, raw[offset + 4:offset + length]))
        offset += length + (-length % 4)
    return Packet(src, sport, dport, tag, tuple(chunks))


def reply_to(pkt: Packet, served: frozenset[int]) -> bytes | None:
    """What a minimal, stateless SCTP endpoint answers (None: nothing).

    INIT on a served port → INIT-ACK with a state cookie; on another port → ABORT (an
    out-of-the-blue INIT, RFC 9260 §8.4); COOKIE-ECHO → COOKIE-ACK; DATA → SACK + the data
    echoed; SHUTDOWN → SHUTDOWN-ACK. Chunks meant for a client (INIT-ACK…) are ignored.
    Stateless by choosing our Initiate Tag equal to the peer's: every later packet of the
    association then carries that one tag in both directions, so no table is needed.
    """
    head = pkt.chunks[0] if pkt.chunks else None
    if head is None:
        return None
    back = (pkt.dport, pkt.sport)
    if head.kind == INIT:
        peer = init_tag(head.value)
        if pkt.dport not in served:
            return abort(*back, peer, reflected=True)
        return init_ack(*back, peer, peer, cookie=b"sdn-netpol-lab")
    if pkt.dport not in served:
        return None
    if head.kind == COOKIE_ECHO:
        return packet(*back, pkt.tag, chunk(COOKIE_ACK))
    if head.kind == DATA and len(head.value) >= 12:
        tsn = struct.unpack("!I", head.value[:4])[0]
        sack = chunk(SACK, struct.pack("!IIHH", tsn, 65535, 0, 0))
        echo = chunk(DATA, struct.pack("!IHHI", tsn + 100, 0, 0, 0) + head.value[12:], flags=0x03)
        return packet(*back, pkt.tag, sack, echo)
    if head.kind == SHUTDOWN:
        return packet(*back, pkt.tag, chunk(SHUTDOWN_ACK))
    return None
