"""Delegate address management to the configured IPAM plugin (normally `host-local`).

The IPAM plugin owns allocation state and its locking (host-local keeps one file per
address under dataDir, behind a file lock), which is what makes concurrent ADDs safe
without any lock of ours. We exec it the way a runtime would: same environment, the
network config bytes unchanged on stdin, so `runtimeConfig.ips` and `CNI_ARGS IP=`
(static addresses) reach it untouched.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdn_netpol.cni.config import CniEnv, NetConf
from sdn_netpol.cni.errors import IPAM_FAILURE, CniError

IPAM_TIMEOUT = 60.0  # host-local waits on its lock under contention; bounded anyway

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IpConfig:
    """One address the pod interface gets, with the gateway IPAM assigned for it."""

    address: IPInterface
    gateway: IPAddress | None


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True)
class IpamResult:
    ips: tuple[IpConfig, ...]
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)


def find_plugin(kind: str, path: tuple[str, ...]) -> str:
    """The first executable named `kind` in CNI_PATH, as libcni's FindInPath does."""
    for folder in path:
        candidate = os.path.join(folder, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(IPAM_FAILURE, f"IPAM plugin {kind!r} not found in CNI_PATH",
                   f"searched: {':'.join(path) or '(empty)'}")


def _child_env(env: CniEnv, command: str) -> dict[str, str]:
    """Our environment with the command set. `IgnoreUnknown=1` is added to CNI_ARGS because
    host-local rejects keys it does not know (K8S_POD_NAME...) unless told to ignore them
    (measured: code 999 "ARGS: unknown args"); kubelet always sends it, other callers may
    not."""
    child = dict(os.environ)
    child["CNI_COMMAND"] = command
    args = env.args_raw
    if args and "IgnoreUnknown" not in env.args:
        child["CNI_ARGS"] = "IgnoreUnknown=1;" + args
    return child


def _failure(kind: str, command: str, proc: subprocess.CompletedProcess[bytes]) -> CniError:
    """Keep a spec code (1-99, e.g. 11 try-again) from the delegate; wrap the rest."""
    text = proc.stdout.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "msg" in doc:
        code = doc.get("code")
        msg = f"IPAM plugin {kind} {command} failed: {doc['msg']}"
        details = str(doc.get("details", "")) or f"IPAM code {code}"
        keep = isinstance(code, int) and 1 <= code < 100
        return CniError(int(code) if keep else IPAM_FAILURE, msg, details)  # type: ignore[arg-type]
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    return CniError(IPAM_FAILURE, f"IPAM plugin {kind} {command} failed (exit {proc.returncode})",
                    (text + " " + stderr).strip()[:2000])


def run_ipam(command: str, conf: NetConf, env: CniEnv) -> bytes:
    """Exec the IPAM plugin for `command`; return its stdout or raise its error."""
    binary = find_plugin(conf.ipam_type, env.path)
    try:
        proc = subprocess.run([binary], input=conf.raw, capture_output=True,
                              env=_child_env(env, command), timeout=IPAM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(IPAM_FAILURE, f"IPAM plugin {conf.ipam_type} {command} timed out",
                       f"after {IPAM_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise CniError(IPAM_FAILURE, f"cannot run IPAM plugin {binary}", str(exc)) from None
    if proc.returncode != 0:
        raise _failure(conf.ipam_type, command, proc)
    return proc.stdout


def _parse_route(doc: Any) -> Route:
    if not isinstance(doc, dict) or "dst" not in doc:
        raise ValueError(f"bad route {doc!r}")
    gw = ipaddress.ip_address(doc["gw"]) if doc.get("gw") else None
    return Route(dst=ipaddress.ip_network(doc["dst"], strict=False), gw=gw)


def _parse_ip(doc: Any) -> IpConfig:
    if not isinstance(doc, dict) or "address" not in doc:
        raise ValueError(f"bad ips entry {doc!r}")
    gw = ipaddress.ip_address(doc["gateway"]) if doc.get("gateway") else None
    return IpConfig(address=ipaddress.ip_interface(doc["address"]), gateway=gw)


def parse_result(stdout: bytes) -> IpamResult:
    """Read an IPAM result of any supported version (0.3.x entries carry `version`, which
    carries no information the address itself does not)."""
    try:
        doc = json.loads(stdout.decode("utf-8"))
        ips = tuple(_parse_ip(item) for item in doc.get("ips") or [])
        routes = tuple(_parse_route(item) for item in doc.get("routes") or [])
        dns = doc.get("dns") or {}
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CniError(IPAM_FAILURE, "IPAM result is not understood", str(exc)) from None
    if not ips:
        raise CniError(IPAM_FAILURE, "IPAM returned no address", stdout.decode("utf-8", "replace"))
    return IpamResult(ips=ips, routes=routes, dns=dns if isinstance(dns, dict) else {})


def ipam_add(conf: NetConf, env: CniEnv) -> IpamResult:
    return parse_result(run_ipam("ADD", conf, env))


def ipam_del(conf: NetConf, env: CniEnv) -> None:
    run_ipam("DEL", conf, env)


def ipam_check(conf: NetConf, env: CniEnv) -> None:
    run_ipam("CHECK", conf, env)
