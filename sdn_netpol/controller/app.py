"""The os-ken application: OpenFlow 1.3 events in, calls on the Switch and the PortMap out.

No logic lives here; handlers only translate os-ken events. os-ken 4.2.2 has no launcher
(no os_ken.cmd), so `start` does what AppManager.run_apps does minus the blocking join and
the shutdown that raises ('HubThread' object has no attribute 'kill'): the process owner
(runtime.py) exits the process instead, leaving the flows in place.

One os-ken defect is worked around (`_Datapath`): with the native hub, a connection that
the switch closes never reaches DEAD_DISPATCHER, so the app would never learn of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from os_ken import cfg
from os_ken.base import app_manager  # must be imported before os_ken.controller.controller
from os_ken.controller import controller as ofp_controller  # also registers the --ofp-* options
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn_netpol.controller.audit import AuditLog
from sdn_netpol.controller.portmap import PortMap
from sdn_netpol.controller.switch import Switch

LOG = logging.getLogger(__name__)
SOCKET_TIMEOUT = 30.0  # os-ken's default 5 s can cut a large bundle while vswitchd is busy


@dataclass(frozen=True)
class Link:
    """What the app reports to (passed to the app's constructor by `start`)."""

    switch: Switch
    ports: PortMap
    audit: AuditLog
    bridge: str = ""  # the bridge this controller serves ("": any that connects)
    report: Callable[[str | None], None] = lambda _message: None  # the status board's "switch"


def _port_name(port: Any) -> str:
    name = port.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class ControllerApp(app_manager.OSKenApp):  # type: ignore[misc]
    OFP_VERSIONS: ClassVar[list[int]] = [ofp.OFP_VERSION]

    def __init__(self, *args: Any, link: Link, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def state_change(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            if not self._is_our_bridge(dp):
                return
            # os-ken read the port description before entering MAIN; port-status events follow.
            self.link.ports.set_switch_ports({_port_name(p): no for no, p in (dp.ports or {}).items()})
            self.link.audit.configure_switch(dp)  # the controller meter, before any flow
            self.link.switch.connected(dp)
        elif ev.state == DEAD_DISPATCHER and self.link.switch.disconnected(dp):
            self.link.ports.switch_gone()

    def _is_our_bridge(self, dp: Any) -> bool:
        """The bridge's LOCAL port carries its name. Another bridge pointed at this
        controller's address must never be programmed with this bridge's pods: it is left
        connected and untouched, and /status says so."""
        local = (dp.ports or {}).get(ofp.OFPP_LOCAL)
        name = _port_name(local) if local is not None else None
        if not self.link.bridge or name == self.link.bridge:
            return True
        message = (f"switch {dp.id:016x} (bridge {name!r}) connected, but this controller serves "
                   f"{self.link.bridge!r}: left untouched")
        LOG.error("%s", message)
        self.link.report(message)
        return False

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, ev: Any) -> None:
        msg = ev.msg
        gone = msg.reason == ofp.OFPPR_DELETE
        self.link.ports.switch_port(_port_name(msg.desc), None if gone else msg.desc.port_no)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats(self, ev: Any) -> None:
        self.link.switch.flow_stats(ev.msg.datapath, ev.msg)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply(self, ev: Any) -> None:
        self.link.switch.barrier_reply(ev.msg.datapath, ev.msg.xid)

    @set_ev_cls(ofp_event.EventONFBundleCtrlMsg, MAIN_DISPATCHER)
    def bundle_reply(self, ev: Any) -> None:
        self.link.switch.bundle_reply(ev.msg.datapath, ev.msg.bundle_id, ev.msg.type)

    @set_ev_cls(ofp_event.EventNXTPacketIn2, MAIN_DISPATCHER)
    def packet_in(self, ev: Any) -> None:
        self.link.audit.packet_in(ev.msg.userdata, ev.msg.data)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error(self, ev: Any) -> None:
        msg = ev.msg
        text = f"type={msg.type} code={msg.code} data={bytes(msg.data[:64]).hex()}"
        self.link.switch.error(msg.datapath, msg.xid, text)


class _Datapath(ofp_controller.Datapath):  # type: ignore[misc]
    """When the receive loop ends (EOF, error), os-ken's serve() "kills" the send thread (a
    no-op in the native hub) and joins it, while it blocks forever on its empty queue: the
    connection is never closed and DEAD_DISPATCHER never comes. An empty message with
    close_socket=True wakes the send loop so that it ends, and serve() can finish."""

    def _recv_loop(self) -> None:
        try:
            super()._recv_loop()
        finally:
            self.send(b"", close_socket=True)


def _connection_factory(sock: Any, address: Any) -> None:
    """os_ken.controller.controller.datapath_connection_factory, with our Datapath."""
    with contextlib.closing(_Datapath(sock, address)) as datapath:
        try:
            datapath.serve()
        except Exception:
            LOG.exception("OpenFlow connection from %s failed", address)


def start(listen: str, link: Link) -> list[Any]:
    """Listen for the switch on HOST:PORT and run the app; returns os-ken's threads."""
    host, _, port = listen.rpartition(":")
    cfg.CONF(args=["--ofp-listen-host", host.strip("[]") or "127.0.0.1", "--ofp-tcp-listen-port", port],
             project="os_ken", default_config_files=[])
    cfg.CONF.set_override("socket_timeout", SOCKET_TIMEOUT)
    ofp_controller.datapath_connection_factory = _connection_factory  # read when the server starts
    manager = app_manager.AppManager.get_instance()
    manager.load_apps([__name__])
    contexts = manager.create_contexts()
    threads: list[Any] = manager.instantiate_apps(**contexts, link=link)
    LOG.info("OpenFlow listening on %s", listen)
    return threads
