"""`sdn-netpol controller`: the per-node OpenFlow controller (sdn_netpol/controller/, see
docs/controller.md).

Registered in sdn_netpol/cli/__init__.py; also runnable as `python -m sdn_netpol.cli.controller`,
which is how the lab and the tests start one (no console script needed). Only the options
are defined at import: os-ken and OVS are imported when the command runs, so `--help` and
the lab's start-up stay fast.
"""

from __future__ import annotations

import logging
import os
import socket

import click

from sdn_netpol.controller.config import AuditOptions, Config, DatapathOptions, KubeOptions, Timing


def _check_source(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value == "kube" or (value.startswith("dir:") and len(value) > len("dir:")):
        return value
    raise click.BadParameter("use kube or dir:PATH")


def _check_listen(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.startswith("unix:") and param.name == "status_listen":
        return value
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter("use HOST:PORT" + (" or unix:PATH" if param.name == "status_listen" else ""))
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", default="dir:/etc/sdn-netpol/manifests", show_default=True, callback=_check_source,
              help="kube (in-cluster config, else --kubeconfig/KUBECONFIG/~/.kube/config) or dir:PATH "
                   "(a folder of manifests, read as `matrix -f PATH` reads it).")
@click.option("--node", default=lambda: os.environ.get("NODE_NAME") or socket.gethostname(),
              show_default="$NODE_NAME or the hostname", help="The Kubernetes node this controller serves.")
@click.option("--bridge", default="br-int", show_default=True, help="The integration bridge (OVSDB name).")
@click.option("--ofp-listen", default="127.0.0.1:6653", show_default=True, callback=_check_listen,
              help="OpenFlow listen address; point the bridge at it with set-controller before any flows.")
@click.option("--status-listen", default="127.0.0.1:9180", show_default=True, callback=_check_listen,
              help="HTTP address for /healthz, /status, /metrics: HOST:PORT or unix:PATH.")
@click.option("--ovsdb", default="unix:/var/run/openvswitch/db.sock", show_default=True,
              help="OVSDB remote holding the bridge's Interfaces (the CNI shim's external_ids).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None, help="For --source kube.")
@click.option("--watch-timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds before the API server ends a watch (it is re-opened where it stopped).")
@click.option("--watch-read-timeout", type=click.FloatRange(0.1), default=90.0, show_default=True,
              help="A watch silent this long is treated as stalled and re-opened.")
@click.option("--coalesce-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Wait this long after a change so that a burst is realized as one bundle.")
@click.option("--dir-poll-ms", type=click.FloatRange(1), default=100.0, show_default=True,
              help="How often a dir: source looks for changed files (at least ten times as long as a look took).")
@click.option("--ovs-rundir", type=click.Path(file_okay=False), default=None,
              show_default="the folder of a unix: --ovsdb, else /var/run/openvswitch",
              help="ovs-vswitchd's run directory (its pidfile and unixctl socket).")
@click.option("--datapath-purge", type=click.Choice(["auto", "purge", "never"]), default="auto", show_default=True,
              help="Purge the datapath's megaflows after each change before reporting it realized. auto: only "
                   "on OVS releases whose userspace datapath can keep stale megaflows (docs/reliability.md).")
@click.option("--datapath-verify-interval", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds between re-translations of the megaflows (stale ones are counted and purged); 0: off.")
@click.option("--datapath-verify-max", type=click.IntRange(1), default=2000, show_default=True,
              help="Megaflows re-translated per verification.")
@click.option("--stats-interval", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds between reads of the per-rule counters for /metrics; 0: off.")
@click.option("--audit-log", type=click.Path(dir_okay=False), default=None,
              help="Write audited connections (Namespace annotation sdn-netpol.io/audit) as JSON lines here.")
@click.option("--audit-rate", type=click.IntRange(1), default=100, show_default=True,
              help="Packets/s the switch may copy to the controller (its controller meter), for the whole node.")
@click.option("--audit-log-max-bytes", type=click.IntRange(1024), default=10 * 1024 * 1024, show_default=True,
              help="Rotate the audit log past this size (one .1 backup).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def controller(source: str, node: str, bridge: str, ofp_listen: str, status_listen: str, ovsdb: str,
               kubeconfig: str | None, watch_timeout: float, watch_read_timeout: float, coalesce_ms: float,
               dir_poll_ms: float, ovs_rundir: str | None, datapath_purge: str, datapath_verify_interval: float,
               datapath_verify_max: int, stats_interval: float, audit_log: str | None, audit_rate: int,
               audit_log_max_bytes: int, log_level: str) -> None:
    """Enforce NetworkPolicy on this node's bridge: watch the cluster (or a folder), keep the
    pod-to-port map, compile, and install each change as one atomic OpenFlow bundle."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("os_ken").setLevel(max(logging.WARNING, logging.getLogger().level))
    config = Config(
        node=node, source=source, bridge=bridge, ofp_listen=ofp_listen, status_listen=status_listen,
        ovsdb=ovsdb, dir_poll=dir_poll_ms / 1000, timing=Timing(coalesce=coalesce_ms / 1000),
        kube=KubeOptions(kubeconfig=kubeconfig, watch_timeout=watch_timeout, read_timeout=watch_read_timeout),
        datapath=DatapathOptions(ovs_rundir, datapath_purge, datapath_verify_interval, datapath_verify_max),
        stats_interval=stats_interval,
        audit=AuditOptions(audit_log, audit_rate, audit_log_max_bytes),
    )
    from sdn_netpol.controller.runtime import run  # imports os-ken and OVS: not needed for --help

    raise SystemExit(run(config))


if __name__ == "__main__":  # pragma: no cover
    controller()
