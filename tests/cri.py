"""A minimal CRI client: the kubelet's side of `runtime.v1.RuntimeService`, over gRPC.

Debian ships no `crictl`, so the tests talk CRI themselves. Only grpcio is needed: the few
messages the pod-sandbox calls use are encoded and decoded here by hand, with the field
numbers of k8s.io/cri-api `pkg/apis/runtime/v1/api.proto` (cited next to each message).
Unknown fields in a response are skipped, as protobuf does.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE = "/runtime.v1.RuntimeService/"
CALL_TIMEOUT = 120.0  # RunPodSandbox waits for the CNI ADD; the machine may be busy
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1

# ------------------------------------------------------------------ protobuf wire format

Field = tuple[int, "str | bytes | int | bool | None"]


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(fields: Iterable[Field]) -> bytes:
    """A message from (field number, value) pairs: str/bytes (an encoded sub-message) are
    length-delimited, int/bool varints; None is left out; repeat a number to repeat a field."""
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
        else:
            out += _varint(number << 3 | 0) + _varint(int(value))
    return bytes(out)


def map_entries(number: int, items: Mapping[str, str]) -> list[Field]:
    """A `map<string, string>` field: one entry message (key = 1, value = 2) per item."""
    return [(number, encode([(1, k), (2, v)])) for k, v in sorted(items.items())]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values in order (bytes for length-delimited, int for varints)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire} for field {number}")
        out.setdefault(number, []).append(value)
    return out


def _str(msg: dict[int, list[Any]], number: int) -> str:
    return bytes(msg.get(number, [b""])[-1]).decode()


def _int(msg: dict[int, list[Any]], number: int) -> int:
    return int(msg.get(number, [0])[-1])


def _sub(msg: dict[int, list[Any]], number: int) -> dict[int, list[Any]]:
    return decode(bytes(msg.get(number, [b""])[-1]))


def _map(msg: dict[int, list[Any]], number: int) -> dict[str, str]:
    entries = (decode(bytes(raw)) for raw in msg.get(number, []))
    return {_str(e, 1): _str(e, 2) for e in entries}


# ------------------------------------------------------------------ the messages


@dataclass(frozen=True)
class SandboxStatus:
    """PodSandboxStatusResponse: the status (id 1, metadata 2, state 3, network 5 with its
    ip 1) and the verbose `info` map (2), whose "info" value is the runtime's JSON."""

    id: str
    name: str
    namespace: str
    state: int
    ip: str
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def netns_path(self) -> str:
        """The sandbox's network namespace, from the OCI spec the runtime reports."""
        spec = self.info.get("runtimeSpec") or {}
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network":
                return str(ns.get("path", ""))
        return ""


def sandbox_config(name: str, namespace: str, uid: str, log_directory: str, cgroup_parent: str = "",
                   labels: Mapping[str, str] | None = None) -> bytes:
    """PodSandboxConfig as the kubelet sends it for a pod with its own network namespace:
    metadata (1: name 1, uid 2, namespace 3, attempt 4), hostname (2), log_directory (3),
    labels (6), linux (8: cgroup_parent 1, security_context 2: namespace_options 1:
    network 1 = POD, pid 2 = CONTAINER, ipc 3 = POD)."""
    metadata = encode([(1, name), (2, uid), (3, namespace), (4, 0)])
    namespaces = encode([(1, 0), (2, 1), (3, 0)])
    linux = encode([(1, cgroup_parent or None), (2, encode([(1, namespaces)]))])
    return encode([(1, metadata), (2, name), (3, log_directory), *map_entries(6, labels or {}), (8, linux)])


class CriClient:
    """RuntimeService over a unix socket, as the kubelet's remote runtime does."""

    def __init__(self, socket_path: str) -> None:
        import grpc

        self.channel = grpc.insecure_channel(f"unix://{socket_path}")

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: bytes, timeout: float = CALL_TIMEOUT) -> dict[int, list[Any]]:
        stub = self.channel.unary_unary(SERVICE + method)  # bytes in, bytes out
        return decode(stub(request, timeout=timeout))

    def version(self, timeout: float = 5.0) -> dict[str, str]:
        """VersionRequest (version 1) -> VersionResponse (version 1, runtime_name 2,
        runtime_version 3, runtime_api_version 4)."""
        msg = self.call("Version", encode([(1, "v1")]), timeout)
        return {"version": _str(msg, 1), "runtime_name": _str(msg, 2),
                "runtime_version": _str(msg, 3), "runtime_api_version": _str(msg, 4)}

    def run_pod_sandbox(self, config: bytes) -> str:
        """RunPodSandboxRequest (config 1, runtime_handler 2) -> pod_sandbox_id (1)."""
        return _str(self.call("RunPodSandbox", encode([(1, config)])), 1)

    def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        """PodSandboxStatusRequest (pod_sandbox_id 1, verbose 2)."""
        msg = self.call("PodSandboxStatus", encode([(1, sandbox_id), (2, True)]))
        status = _sub(msg, 1)
        metadata = _sub(status, 2)
        info = _map(msg, 2)
        return SandboxStatus(id=_str(status, 1), name=_str(metadata, 1), namespace=_str(metadata, 3),
                             state=_int(status, 3), ip=_str(_sub(status, 5), 1),
                             info=json.loads(info["info"]) if info.get("info") else {})

    def list_pod_sandbox_ids(self) -> list[str]:
        """ListPodSandboxRequest (no filter) -> items (1), each a PodSandbox with id 1."""
        msg = self.call("ListPodSandbox", b"")
        return [_str(decode(bytes(raw)), 1) for raw in msg.get(1, [])]

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("StopPodSandbox", encode([(1, sandbox_id)]))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("RemovePodSandbox", encode([(1, sandbox_id)]))
