"""Parse and validate what the runtime hands the plugin: `CNI_*` variables and stdin config.

Validation happens here, before any side effect, so that a bad invocation fails with the
spec's error code (4 for the environment, 6/7 for the config) and leaves nothing behind.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdn_netpol.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    CniError,
)

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
DEFAULT_BRIDGE = "br-int"
DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock"
DEFAULT_MTU = 1450  # VXLAN/Geneve overhead on a 1500 underlay (LAB-NOTES)
DEFAULT_OVS_TIMEOUT = 10.0

# The spec's container-id grammar, and Linux interface names (IFNAMSIZ 16 incl. NUL).
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_IFNAME_BYTES = 15
_KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")  # the kernel's isspace(): 0xa0 too (a UTF-8 byte of 'à')
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # the spec's grammar for `name`
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
}


@dataclass(frozen=True)
class CniEnv:
    """The invocation: which command, for which container, interface and namespace."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args_raw: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


@dataclass(frozen=True)
class NetConf:
    """The network configuration of one plugin invocation (conflist entry with name and
    cniVersion injected). `raw` is the text as received: it is what the IPAM plugin gets,
    so that runtimeConfig (the `ips` capability) and args reach it unchanged."""

    cni_version: str
    name: str
    raw: bytes
    bridge: str = DEFAULT_BRIDGE
    ovsdb: str = DEFAULT_OVSDB
    mtu: int = DEFAULT_MTU
    ipam_type: str = ""
    ovs_timeout: float = DEFAULT_OVS_TIMEOUT
    dns: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Mapping[str, Any] | None = None


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K=V;K=V` as the runtime sends it; pairs without `=` are malformed (code 4), and so is
    text that is not UTF-8 (its values go to OVSDB, which takes UTF-8 only)."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CniError(INVALID_ENV, "CNI_ARGS is not UTF-8 text", f"byte {exc.start}") from None
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CniError(INVALID_ENV, "CNI_ARGS is malformed", f"bad pair {pair!r}")
        out[key.strip()] = value.strip()
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Check the variables the command needs; the message names the bad ones (spec)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}",
                       f"expected one of {', '.join(COMMANDS)}")
    missing = [k for k in _REQUIRED[command] if not environ.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"required environment variables missing: "
                       f"{', '.join(missing)}")
    if command == "VERSION":
        return CniEnv(command=command)
    env = CniEnv(
        command=command,
        container_id=environ["CNI_CONTAINERID"],
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ["CNI_IFNAME"],
        args_raw=environ.get("CNI_ARGS", ""),
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=tuple(p for p in environ["CNI_PATH"].split(":") if p),
    )
    if not _CONTAINER_ID.match(env.container_id):
        raise CniError(INVALID_ENV, "CNI_CONTAINERID is invalid",
                       f"{env.container_id!r}: alphanumerics, '_', '.', '-' only")
    if not valid_ifname(env.ifname):
        raise CniError(INVALID_ENV, "CNI_IFNAME is invalid",
                       f"{env.ifname!r}: 1-15 bytes of UTF-8, not '.' or '..', no whitespace, '/' or ':'")
    return env


def valid_ifname(name: str) -> bool:
    """A name Linux accepts for an interface (dev_valid_name): 1-15 *bytes*, not '.' or
    '..', no '/', ':' or whitespace. Checked here, before IPAM or any link exists, so that a
    bad name is refused by us rather than halfway through an ADD. Bytes that are not UTF-8
    are refused too: the kernel would take them, but netlink (pyroute2) and OVSDB take text."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return (bool(_IFNAME.match(name)) and len(raw) <= _IFNAME_BYTES and name not in (".", "..")
            and not _KERNEL_SPACE.intersection(raw))


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network config is not valid JSON", str(exc)) from None
    except RecursionError:
        raise CniError(DECODE_FAILURE, "network config is not valid JSON", "nested too deeply") from None
    if not isinstance(doc, dict):
        raise CniError(DECODE_FAILURE, "network config must be a JSON object")
    return doc


def _get(doc: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """A typed optional field; a wrong type names the key and value (spec, code 7)."""
    value = doc.get(key, default)
    if kind is int and isinstance(value, bool):
        value = "bool"
    if not isinstance(value, kind):
        raise CniError(INVALID_CONFIG, f"config field {key!r} must be {kind.__name__}",
                       f"got {value!r}")
    return value


def check_version(version: str) -> None:
    """Refuse versions we cannot format a result for (spec code 1)."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version!r}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")


def _ipam_type(doc: Mapping[str, Any]) -> str:
    ipam = doc.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "config field 'ipam' is required (an object)")
    kind = ipam.get("type")
    if not isinstance(kind, str) or not _PLUGIN_NAME.match(kind):
        raise CniError(INVALID_CONFIG, "config field 'ipam.type' must name a plugin",
                       f"got {kind!r}")
    return kind


def parse_netconf(raw: bytes) -> NetConf:
    """Validate the fields this plugin reads; everything else passes through to IPAM."""
    doc = _decode(raw)
    version = _get(doc, "cniVersion", str, "")
    if not version:
        raise CniError(INVALID_CONFIG, "config field 'cniVersion' is required")
    check_version(version)
    name = _get(doc, "name", str, "")
    if not name:
        raise CniError(INVALID_CONFIG, "config field 'name' is required")
    if not _NETWORK_NAME.match(name):  # the spec's grammar; host-local makes it a folder name
        raise CniError(INVALID_CONFIG, "config field 'name' is not a network name",
                       f"{name!r}: alphanumerics, '_', '.', '-', starting with an alphanumeric")
    mtu = _get(doc, "mtu", int, DEFAULT_MTU)
    if not 576 <= mtu <= 65535:
        raise CniError(INVALID_CONFIG, "config field 'mtu' out of range", f"{mtu}")
    bridge = _get(doc, "bridge", str, DEFAULT_BRIDGE)
    if not valid_ifname(bridge):
        raise CniError(INVALID_CONFIG, "config field 'bridge' is not a bridge name",
                       f"{bridge!r}")
    timeout = doc.get("ovsTimeout", DEFAULT_OVS_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise CniError(INVALID_CONFIG, "config field 'ovsTimeout' must be a positive number",
                       f"got {timeout!r}")
    prev = doc.get("prevResult")
    return NetConf(
        cni_version=version,
        name=name,
        raw=raw,
        bridge=bridge,
        ovsdb=_get(doc, "ovsdb", str, DEFAULT_OVSDB),
        mtu=mtu,
        ipam_type=_ipam_type(doc),
        ovs_timeout=float(timeout),
        dns=_get(doc, "dns", dict, {}),
        prev_result=prev if isinstance(prev, dict) else None,
    )


def version_of(raw: bytes) -> str:
    """Best-effort cniVersion for error replies, even when the config is unusable."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
        return SPEC_VERSION
    version = doc.get("cniVersion") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else SPEC_VERSION
