"""`sdn-netpol-cni`: CNI 1.0.0 plugin attaching pods to the node's OVS bridge.

ADD: IPAM (delegated) -> veth pair -> pod addresses/routes/MTU/tx-csum-off -> Port on
br-int with pod external_ids -> wait for its ofport -> result. Each step registers its
undo; a failure runs them in reverse so a failed ADD leaves no veth, port or address.
DEL undoes the same steps and tolerates every one of them being already gone.

The process is short-lived and single-threaded by design: concurrency between pods is
handled by host-local's lock and by OVSDB transactions, not by us.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from sdn_netpol.cni import netlink
from sdn_netpol.cni.config import (
    SPEC_VERSION,
    SUPPORTED_VERSIONS,
    CniEnv,
    NetConf,
    parse_env,
    parse_netconf,
    version_of,
)
from sdn_netpol.cni.errors import INTERNAL, INVALID_CONFIG, INVALID_ENV, IO_FAILURE, CniError
from sdn_netpol.cni.families import check_families, ipv6_disabled_here
from sdn_netpol.cni.ipam import ipam_add, ipam_del
from sdn_netpol.cni.result import Attachment, build_result, external_ids

if TYPE_CHECKING:
    from sdn_netpol.cni.ovsdb import Ovsdb

Undo = Callable[[], object]


# The least time the undo of a failed ADD gives OVSDB to remove the Port it added. The ADD
# failed because OVS was slow (a tiny ovsTimeout, a loaded node); no runtime retries a
# rollback, so one that gave up as fast would leave a Port and Interface row behind for a veth
# that is gone (seen under load with ovsTimeout 0.05).
ROLLBACK_OVS_TIMEOUT = 10.0


def _connect(conf: NetConf, timeout: float | None = None) -> Ovsdb:
    """Imported late: see `_without_green_threads`."""
    from sdn_netpol.cni.ovsdb import Ovsdb

    return Ovsdb(conf.ovsdb, conf.ovs_timeout if timeout is None else timeout)


def _without_green_threads() -> None:
    """`ovs.poller` probes for eventlet/gevent at import; eventlet (pulled in by os-ken)
    costs ~110 ms per run and prints a deprecation warning to stderr. A one-shot plugin
    process never uses green threads, so the probe is made to fail fast."""
    for name in ("eventlet", "gevent"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _rollback(undo: list[tuple[str, Undo]]) -> list[str]:
    """Run the undo steps newest first; report the ones that failed (best effort)."""
    failures = []
    for what, step in reversed(undo):
        try:
            step()
        except Exception as exc:
            failures.append(f"rollback of {what} failed: {exc}")
    return failures


def _require_netns(env: CniEnv) -> None:
    if not netlink.netns_exists(env.netns):
        raise CniError(INVALID_ENV, f"CNI_NETNS {env.netns!r} is not a network namespace")


def _attach(env: CniEnv, conf: NetConf, undo: list[tuple[str, Undo]]) -> Attachment:
    ipam = ipam_add(conf, env)
    undo.append(("IPAM allocation", lambda: ipam_del(conf, env)))
    host = netlink.host_ifname(env.container_id, env.ifname)
    mac = netlink.pod_mac(ipam.ips, env.container_id)
    netlink.create_veth(host, env.netns, env.ifname, mac, conf.mtu)
    undo.append((f"veth {host}", lambda: netlink.delete_link(host)))
    routes = netlink.configure_pod(env.netns, env.ifname, ipam, mac)
    host_mac = netlink.host_up(host)
    db = _connect(conf)  # an unreachable OVSDB has changed nothing: no undo yet
    try:
        undo.append((f"OVS port {host}", lambda: _detach(conf, host, max(conf.ovs_timeout, ROLLBACK_OVS_TIMEOUT))))
        db.attach(conf.bridge, host, external_ids(env, ipam, mac))
    finally:
        db.close()
    return Attachment(host_ifname=host, host_mac=host_mac, ifname=env.ifname, mac=mac,
                      sandbox=env.netns, ipam=ipam, routes=tuple(routes))


def _check_families(env: CniEnv, conf: NetConf) -> None:
    """Before IPAM: the ranges and requested addresses are ones this node and the pod's
    namespace can have (families.py)."""
    ranges = check_families(conf, env, ipv6_disabled_here())
    if 6 in ranges.families:
        why = netlink.ipv6_disabled_in(env.netns)
        if why is not None:
            raise CniError(INVALID_CONFIG, "IPv6 range on a pod whose network namespace has no IPv6",
                           f"in {env.netns}: {why}")


def cmd_add(env: CniEnv, conf: NetConf) -> dict[str, Any]:
    _require_netns(env)
    _check_families(env, conf)
    undo: list[tuple[str, Undo]] = []
    try:
        att = _attach(env, conf, undo)
    except BaseException as exc:
        failures = _rollback(undo)
        if failures and isinstance(exc, CniError):
            exc.details = "; ".join([exc.details, *failures]).strip("; ")
        raise
    return build_result(att, conf.cni_version, conf.dns)


def _detach(conf: NetConf, host: str, timeout: float | None = None) -> bool:
    db = _connect(conf, timeout)
    try:
        return db.detach(host)
    finally:
        db.close()


def cmd_del(env: CniEnv, conf: NetConf) -> None:
    """OVS port, then veth (its peer dies with it, netns or not), then the address.
    Each step is a no-op when its object is gone, so a repeated DEL succeeds; a failing
    step does not stop the others (free what we can), the first failure is reported."""
    host = netlink.host_ifname(env.container_id, env.ifname)
    steps: list[tuple[str, Undo]] = [
        (f"OVS port {host}", lambda: _detach(conf, host)),
        (f"veth {host}", lambda: netlink.delete_link(host)),
        ("IPAM allocation", lambda: ipam_del(conf, env)),
    ]
    errors: list[CniError] = []
    for what, step in steps:
        try:
            step()
        except CniError as exc:
            errors.append(exc)
        except Exception as exc:
            errors.append(CniError(INTERNAL, f"DEL of {what} failed", str(exc)))
    if errors:
        first = errors[0]
        first.details = "; ".join([first.details, *(str(e) for e in errors[1:])]).strip("; ")
        raise first


def cmd_version() -> dict[str, Any]:
    return {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def run(environ: Mapping[str, str], stdin: bytes) -> dict[str, Any] | None:
    """Dispatch one invocation; returns what goes to stdout (None: nothing)."""
    env = parse_env(environ)
    if env.command == "VERSION":
        return cmd_version()
    conf = parse_netconf(stdin)
    if env.command == "ADD":
        return cmd_add(env, conf)
    if env.command == "DEL":
        cmd_del(env, conf)
        return None
    from sdn_netpol.cni.check import cmd_check

    cmd_check(env, conf)
    return None


def _emit(out: TextIO, doc: Mapping[str, Any]) -> None:
    out.write(json.dumps(doc, indent=2) + "\n")
    out.flush()


def main() -> int:
    """Entry point: never a traceback, always the spec's error object and exit 1."""
    _without_green_threads()
    stdin = b""
    try:
        try:
            stdin = sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") != "VERSION" else b""
        except OSError as exc:
            raise CniError(IO_FAILURE, "cannot read the network config from stdin",
                           str(exc)) from None
        doc = run(os.environ, stdin)
        if doc is not None:
            _emit(sys.stdout, doc)
        return 0
    except CniError as exc:
        err = exc
    except Exception as exc:
        err = CniError(INTERNAL, "internal error in sdn-netpol-cni", f"{type(exc).__name__}: {exc}")
    _emit(sys.stdout, err.to_json(version_of(stdin)))
    print(f"sdn-netpol-cni: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
