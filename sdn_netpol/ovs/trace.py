"""Fast ``ofproto/trace``: one unixctl connection to ovs-vswitchd, kept open.

Why: differential tests compare the policy model with OVS on tens of thousands of packets;
spawning ``ovs-appctl`` per trace costs a process start each time.  :class:`Tracer` keeps
one unixctl (JSON-RPC) connection open, using ``ovs.stream``/``ovs.poller`` from the
``ovs`` Python package for the transport and the stdlib ``json`` for messages (see
:class:`UnixctlChannel` for why not ``ovs.unixctl.client.UnixctlClient``).

Measured on the project VM (2 vCPU, OVS 3.1, other jobs running: load 6-8), the
conjunction + ct pipeline of tests/test_ovs_harness.py, ``--ct-next trk,new``:

=====================================================  ==================
``Tracer.trace`` (socket + parse_trace)                 5,000-12,600 /s
  of which the unixctl round trip alone                 12,000-20,500 /s
  of which :func:`parse_trace` alone                    23,000-33,000 /s
``ovs.unixctl.client.UnixctlClient`` round trip only    2,200-2,500 /s
``ovs-appctl ofproto/trace`` subprocess                 130-250 /s
=====================================================  ==================

``ct_next`` entries are passed as separate ``--ct-next FLAGS`` argument pairs, exactly as
``ovs-appctl`` forwards its argv; each ``ct(table=...)`` recirculation consumes the next one
(OVS falls back to ``trk,new`` when they run out).  Traced flows need ``nw_ttl`` (e.g. 64)
or ``dec_ttl`` drops them.

Reading a trace (OVS 3.1 wording):

* ``Datapath actions: ...`` ends every pass (the first pass, then one per ``recirc(...)``
  section).  Outputs there are *datapath* port numbers, which in the userspace datapath
  differ from OpenFlow ports (``dpif/show`` prints ``name ofport/odpport``).
* The OpenFlow walk prints each action; an output is ``output:N``, ``IN_PORT``,
  ``LOCAL`` or ``output:REG[..]`` followed by ``-> output port is N``.  Notes under an
  output (``>> skipping output to input port``, ``>> Nonexistent output port``,
  ``>> OFPPC_NO_FWD set, skipping output``) mean it did not happen.  A tunnel output is
  followed by ``-> output to native tunnel`` and, when the underlay route resolves,
  ``-> tunneling to IP via BRIDGE``; when it does not (``>> native tunnel routing failed``)
  the OpenFlow output still happened but the datapath drops.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sdn_netpol.ovs.instance import OvsError, OvsInstance


def _ovs_io() -> tuple[Any, Any]:
    """`ovs.poller` and `ovs.stream`, imported when a channel first opens: ovs.poller imports
    eventlet (from os-ken) when it is installed, and eventlet dnspython: 0.15-0.5 s that
    every `sdn-netpol lab` command paid at start-up, whether it traced or not."""
    with warnings.catch_warnings():  # eventlet warns
        warnings.simplefilter("ignore")
        import ovs.poller
        import ovs.stream
    return ovs.poller, ovs.stream


OFPP_LOCAL = 0xFFFE
_DECODER = json.JSONDecoder()
_CANCELLED = (
    "skipping output to input port", "Nonexistent output port", "OFPPC_NO_FWD set",
)
_BRIDGE = re.compile(r'^bridge\("(?P<name>[^"]+)"\)$')
_IN_PORT = re.compile(r"(?:^|,)in_port=(?P<port>\d+)(?=,|$)")
_OUTPUT = re.compile(r"^(?:output:(?P<num>\d+)|output\(port=(?P<trunc>\d+)[,)].*)$")
_OUTPUT_REG = re.compile(r"^output:\S+\[.*\]$")
_TUN_DST = re.compile(r"^set_field:(?P<ip>[0-9a-fA-F.:]+)->tun_(?:ipv6_)?dst$")
_TUN_DST_LOAD = re.compile(r"^load:(?P<hex>0x[0-9a-fA-F]+)->NXM_NX_TUN_IPV4_DST\[\]$")
_TABLE_LINE = re.compile(r"^\s*\d+\. ")
_RESOLVED = re.compile(r"output port is (?P<port>\d+)")
_TUNNELING = re.compile(r"tunneling to (?P<ip>\S+) via")


@dataclass(frozen=True)
class TraceResult:
    """What ``ofproto/trace`` says happens to one packet.

    ``dropped`` is the datapath verdict: no pass outputs the packet anywhere (a
    ``userspace(...)`` controller action counts as output unless ``dont_send=1``).  For a *policy* verdict prefer
    ``of_outputs``: a tunnel output whose underlay route is missing is dropped by the
    datapath but was allowed by the flow table.  Walks into other bridges (the underlay
    bridge after a tunnel output, patch ports) are not counted in ``of_outputs``.
    """

    raw: str
    datapath_actions: str  # the last "Datapath actions:" line (the final pass)
    dropped: bool
    output_ports: tuple[int | str, ...]  # datapath ports of all passes; "userspace" too
    of_outputs: tuple[int, ...]  # OpenFlow ports output to, on the traced bridge only
    tunnel_dst: str | None  # tun_dst in effect at the last tunnel output, if any


@dataclass
class _Output:
    port: int | None
    cancelled: bool = False


@dataclass
class _Walk:
    """Mutable state while reading the OpenFlow walk of one trace."""

    bridge: str
    current: str | None = None
    in_port: int | None = None
    tun_dst: str | None = None
    outputs: list[_Output] = field(default_factory=list)
    last: _Output | None = None  # the output the following notes belong to
    tunnel_dst: str | None = None


def parse_trace(raw: str, bridge: str) -> TraceResult:
    """Parse the text of ``ofproto/trace BRIDGE FLOW`` (pure; no OVS needed)."""
    dp_lines = [
        line.split(":", 1)[1].strip() for line in raw.splitlines()
        if line.startswith("Datapath actions:")
    ]
    ports = tuple(p for actions in dp_lines for p in datapath_outputs(actions))
    walk = _Walk(bridge)
    for line in raw.splitlines():
        _feed(walk, line)
    return TraceResult(
        raw=raw,
        datapath_actions=dp_lines[-1] if dp_lines else "",
        dropped=not ports,
        output_ports=ports,
        of_outputs=tuple(o.port for o in walk.outputs if o.port is not None and not o.cancelled),
        tunnel_dst=walk.tunnel_dst,
    )


def datapath_outputs(actions: str) -> list[int | str]:
    """Output ports of one datapath action list: bare numbers at top level or inside
    ``clone(...)``; ``userspace(...)`` (packet to controller) as ``"userspace"``, unless
    it says ``dont_send=1``: no controller will get it (seen on a table miss for ~50 ms
    after vswitchd starts, before a secure bridge's miss handling settles to ``drop``)."""
    found: list[int | str] = []
    for action in _split_top(actions):
        if action.isdigit():
            found.append(int(action))
        elif action.startswith("clone(") and action.endswith(")"):
            found.extend(datapath_outputs(action[len("clone("):-1]))
        elif action.startswith("userspace(") and "dont_send=1" not in action:
            found.append("userspace")
    return found


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _feed(walk: _Walk, line: str) -> None:
    """Advance the walk by one trace line."""
    text = line.strip()
    if _TABLE_LINE.match(line):  # "31. ct_state=..." : tables >= 10 print at column 0
        walk.last = None
        return
    if line[:1] not in ("", " "):  # a top-level line: section header, Flow:, Final flow:...
        if set(text) <= {"-", "="}:  # underlines and separators keep the section
            return
        header = _BRIDGE.match(text)
        walk.current = header.group("name") if header else None
        if text.startswith("Flow:"):
            in_port = _IN_PORT.search(text)
            walk.in_port = int(in_port.group("port")) if in_port else None
        walk.last = None
    elif walk.current == walk.bridge and text:
        if text.startswith(("->", ">>")):
            _note(walk, text)
        else:
            _action(walk, text)


def _action(walk: _Walk, text: str) -> None:
    walk.last = None
    output = _OUTPUT.match(text)
    port: int | None
    if output:
        port = int(output.group("num") or output.group("trunc"))
    elif text == "IN_PORT":
        port = walk.in_port
    elif text == "LOCAL":
        port = OFPP_LOCAL
    elif _OUTPUT_REG.match(text):
        port = None  # resolved by the "-> output port is N" note
    else:
        _track_tun_dst(walk, text)
        return
    walk.last = _Output(port)
    walk.outputs.append(walk.last)


def _track_tun_dst(walk: _Walk, text: str) -> None:
    found = _TUN_DST.match(text)
    if found:
        walk.tun_dst = found.group("ip")
        return
    loaded = _TUN_DST_LOAD.match(text)
    if loaded:
        value = int(loaded.group("hex"), 16)
        walk.tun_dst = ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def _note(walk: _Walk, text: str) -> None:
    out = walk.last
    if out is None:
        return
    resolved = _RESOLVED.search(text)
    tunneling = _TUNNELING.search(text)
    if resolved:
        out.port = int(resolved.group("port"))
    elif any(reason in text for reason in _CANCELLED):
        out.cancelled = True
    elif "output to native tunnel" in text or "output to kernel tunnel" in text:
        walk.tunnel_dst = walk.tun_dst
    elif tunneling:
        walk.tunnel_dst = tunneling.group("ip")


def trace_args(bridge: str, flow: str, ct_next: Sequence[str] = ()) -> list[str]:
    """``ofproto/trace``'s arguments: one ``--ct-next FLAGS`` pair per recirculation."""
    args = [bridge, flow]
    for flags in ct_next:
        args += ["--ct-next", flags]
    return args


class UnixctlChannel:
    """One JSON-RPC connection to a unixctl socket.

    Transport is ``ovs.stream`` (connect, non-blocking send/recv) with ``ovs.poller`` for
    waiting, as ``ovs.unixctl.client.UnixctlClient`` does; but messages are encoded and
    decoded with the stdlib ``json`` (C accelerated) instead of ``ovs.json``, whose
    character-by-character pure-Python parser capped a ~1.5 KB trace reply at ~2,300
    traces/s (measured: 12,000-23,000/s with stdlib json on the same pipeline).
    Unlike UnixctlClient it also has a timeout.
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self._timeout_ms = int(timeout * 1000)
        self._poller, self._streams = _ovs_io()
        error, stream = self._streams.Stream.open_block(
            self._streams.Stream.open(f"unix:{path}"), self._timeout_ms
        )
        if error:
            raise OSError(error, f"cannot connect to {path}: {os.strerror(error)}")
        self._stream: Any = stream
        self._buffer = b""
        self._next_id = 0

    def transact(self, method: str, params: Sequence[str]) -> tuple[str | None, str]:
        """Send one request and wait for its reply: (error text or None, result text)."""
        self._next_id += 1
        request = {"method": method, "params": list(params), "id": self._next_id}
        self._send_all(json.dumps(request).encode())
        while True:
            reply = self._recv_object()
            if reply.get("id") == self._next_id:
                error = reply.get("error")
                return (None if error is None else str(error)), str(reply.get("result") or "")

    def close(self) -> None:
        self._stream.close()

    def _send_all(self, data: bytes) -> None:
        while data:
            sent = self._stream.send(data)
            if sent == -errno.EAGAIN:
                self._wait(self._streams.Stream.W_SEND)
            elif sent < 0:
                raise OSError(-sent, os.strerror(-sent))
            else:
                data = data[sent:]

    def _recv_object(self) -> dict[str, Any]:
        while True:
            if self._buffer.rstrip().endswith(b"}"):  # maybe complete: try to decode
                try:
                    text = self._buffer.decode()
                    obj, end = _DECODER.raw_decode(text)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass  # a "}" inside a string: read more
                else:
                    self._buffer = text[end:].lstrip().encode()
                    return dict(obj)
            error, chunk = self._stream.recv(65536)
            if error == errno.EAGAIN:
                self._wait(self._streams.Stream.W_RECV)
            elif error or not chunk:
                raise ConnectionError(error or errno.ECONNRESET, "unixctl connection closed")
            else:
                self._buffer += chunk

    def _wait(self, kind: int) -> None:
        poller = self._poller.Poller()
        self._stream.wait(poller, kind)
        poller.timer_wait(self._timeout_ms)
        before = time.monotonic()
        poller.block()
        if time.monotonic() - before >= self._timeout_ms / 1000:
            raise TimeoutError(f"no unixctl answer within {self._timeout_ms} ms")


class Tracer:
    """Keeps one unixctl connection to the instance's ovs-vswitchd for many traces.

    If vswitchd was restarted (new pid, new socket) the next call reconnects once.
    Not thread-safe: use one Tracer per thread.
    """

    def __init__(self, instance: OvsInstance, timeout: float = 10.0) -> None:
        self._instance = instance
        self._timeout = timeout
        self._channel: UnixctlChannel | None = None

    def trace(self, bridge: str, flow: str, ct_next: Sequence[str] = ()) -> TraceResult:
        """``ofproto/trace BRIDGE FLOW [--ct-next FLAGS]...``; OvsError if OVS rejects it."""
        return parse_trace(self.call("ofproto/trace", *trace_args(bridge, flow, ct_next)), bridge)

    def call(self, command: str, *args: str) -> str:
        """Any unixctl command; a server-side error raises OvsError (exit code 2 like
        ``ovs-appctl``).  A broken connection is retried once on a fresh one, so only use
        this for commands that are safe to repeat."""
        cmd = ["unixctl", command, *args]
        for attempt in (1, 2):
            try:
                error, result = self._connection().transact(command, args)
            except OSError as exc:  # ConnectionError, TimeoutError, connect failure
                self.close()
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise OvsError(cmd, -1, str(exc)) from exc
                continue
            if error is not None:
                raise OvsError(cmd, 2, error)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Tracer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> UnixctlChannel:
        if self._channel is None:
            self._channel = UnixctlChannel(str(self._instance.vswitchd_ctl), self._timeout)
        return self._channel
