"""Attach/detach the pod's host veth on the node bridge through the OVSDB IDL.

Why the IDL and not `ovs-vsctl`: one process, one connection, a transaction that adds
Port+Interface and mutates Bridge.ports (a mutation, so parallel ADDs never conflict),
and a monitor on Interface.ofport, which is how we know vswitchd has really opened the
port. The controller maps pods to ports from the external_ids written here, so the plugin
only returns once that row is complete (ofport assigned).

Every wait is bounded by the config's `ovsTimeout`; an unreachable server or a silent
vswitchd is "try again later" (code 11), never a hang of the runtime.
"""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

from sdn_netpol.cni.errors import INTERFACE_FAILURE, OVSDB_FAILURE, TRY_AGAIN_LATER, CniError

DB_NAME = "Open_vSwitch"
COLUMNS = {
    "Bridge": ["name", "ports"],
    "Port": ["name", "interfaces", "external_ids"],
    "Interface": ["name", "ofport", "external_ids", "error"],
}


@dataclass(frozen=True)
class PortInfo:
    """A pod port as CHECK sees it."""

    bridge: str
    port_ids: Mapping[str, str]
    iface_ids: Mapping[str, str]
    ofport: int


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left_ms(self) -> int:
        return max(0, int((self.end - time.monotonic()) * 1000))

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def _unreachable(remote: str, why: str) -> CniError:
    return CniError(TRY_AGAIN_LATER, f"OVSDB {remote} is not reachable", why)


def _fetch_schema(remote: str, deadline: _Deadline) -> Any:
    """`get_schema` over a short-lived JSON-RPC connection, bounded by the deadline."""
    error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote),
                                                 deadline.left_ms())
    if error:
        raise _unreachable(remote, os.strerror(error))
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        error = rpc.send(ovs.jsonrpc.Message.create_request("get_schema", [DB_NAME]))
        while not error:
            rpc.run()
            error, msg = rpc.recv()
            if msg is not None:
                if msg.error or not isinstance(msg.result, dict):
                    raise CniError(OVSDB_FAILURE, "get_schema failed", str(msg.error))
                return msg.result
            if error != errno.EAGAIN:
                break
            if deadline.expired():
                raise _unreachable(remote, "get_schema timed out")
            error = 0
            poller = ovs.poller.Poller()
            rpc.wait(poller)
            rpc.recv_wait(poller)
            poller.timer_wait(deadline.left_ms())
            poller.block()
        raise _unreachable(remote, os.strerror(error) if error else "connection closed")
    finally:
        rpc.close()


class Ovsdb:
    """An IDL replica of the three tables we touch, with bounded waits."""

    def __init__(self, remote: str, timeout: float) -> None:
        self.remote = remote
        self.timeout = timeout
        deadline = _Deadline(timeout)
        helper = ovs.db.idl.SchemaHelper(schema_json=_fetch_schema(remote, deadline))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        self.idl = ovs.db.idl.Idl(remote, helper)
        self._run_until(self.idl.has_ever_connected, deadline, "initial sync")

    def close(self) -> None:
        self.idl.close()

    def _block(self, deadline: _Deadline, txn: Any = None) -> None:
        poller = ovs.poller.Poller()
        self.idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(deadline.left_ms())
        poller.block()

    def _run_until(self, done: Callable[[], bool], deadline: _Deadline, what: str) -> None:
        while True:
            self.idl.run()
            if done():
                return
            if deadline.expired():
                raise _unreachable(self.remote, f"{what} timed out after {self.timeout:g} s")
            self._block(deadline)

    def _rows(self, table: str) -> list[Any]:
        return list(self.idl.tables[table].rows.values())

    def _commit(self, txn: Any, deadline: _Deadline) -> str:
        while True:
            status = txn.commit()
            if status != ovs.db.idl.Transaction.INCOMPLETE:
                return str(status)
            if deadline.expired():
                txn.abort()
                raise _unreachable(self.remote, "transaction timed out")
            self.idl.run()
            self._block(deadline, txn)

    def transact(self, build: Callable[[Any], None], deadline: _Deadline) -> Any:
        """Run `build(txn)` and commit; TRY_AGAIN (a verify lost a race, or a reconnect)
        rebuilds from the refreshed replica, as the IDL contract asks."""
        while True:
            seqno = self.idl.change_seqno
            txn = ovs.db.idl.Transaction(self.idl)
            try:
                build(txn)
            except BaseException:
                txn.abort()
                raise
            status = self._commit(txn, deadline)
            if status in (txn.SUCCESS, txn.UNCHANGED):
                return txn
            if status != txn.TRY_AGAIN:
                raise CniError(OVSDB_FAILURE, f"OVSDB transaction failed ({status})",
                               str(txn.get_error()))
            self._wait_change(seqno, deadline)

    def _wait_change(self, seqno: int, deadline: _Deadline) -> None:
        """Before a retry the replica must have moved past the state the txn was built on."""
        self._run_until(lambda: bool(self.idl.change_seqno != seqno), deadline, "retry")

    # -- operations -----------------------------------------------------------------

    def _bridge(self, name: str) -> Any:
        for row in self._rows("Bridge"):
            if row.name == name:
                return row
        raise CniError(TRY_AGAIN_LATER, f"bridge {name!r} does not exist in OVSDB {self.remote}",
                       "the node agent creates it; retry once it exists")

    def _drop_port(self, name: str) -> bool:
        """Within the current transaction: unlink every Port `name` from its bridge."""
        found = False
        for port in self._rows("Port"):
            if port.name != name:
                continue
            found = True
            for bridge in self._rows("Bridge"):
                if any(p.uuid == port.uuid for p in bridge.ports):
                    bridge.delvalue("ports", port.uuid)
            for iface in port.interfaces:
                iface.delete()
            port.delete()
        return found

    def attach(self, bridge: str, name: str, external_ids: Mapping[str, str]) -> int:
        """Add Port+Interface `name` (replacing a stale one) and wait for its ofport."""
        deadline = _Deadline(self.timeout)
        ids = dict(external_ids)

        def build(txn: Any) -> None:
            br = self._bridge(bridge)
            self._drop_port(name)
            iface = txn.insert(self.idl.tables["Interface"])
            iface.name = name
            iface.external_ids = ids
            port = txn.insert(self.idl.tables["Port"])
            port.name = name
            port.interfaces = [iface.uuid]
            port.external_ids = ids
            br.addvalue("ports", port.uuid)

        self.transact(build, deadline)
        return self._wait_ofport(name, deadline)

    def _iface(self, name: str) -> Any | None:
        for row in self._rows("Interface"):
            if row.name == name:
                return row
        return None

    def _wait_ofport(self, name: str, deadline: _Deadline) -> int:
        """vswitchd writes ofport once it has opened the device; -1 plus `error` means it
        could not (e.g. no such device in its namespace)."""
        state: dict[str, int] = {}

        def assigned() -> bool:
            row = self._iface(name)
            value = row.ofport[0] if row is not None and row.ofport else None
            if value == -1 and row is not None and row.error:
                raise CniError(INTERFACE_FAILURE, f"ovs-vswitchd cannot add {name}",
                               str(row.error[0]))
            if value is not None and value > 0:
                state["ofport"] = int(value)
                return True
            return False

        self._run_until(assigned, deadline, f"waiting for the ofport of {name}")
        return state["ofport"]

    def detach(self, name: str) -> bool:
        """Remove Port `name` wherever it is; absent is fine (DEL is idempotent)."""
        found: dict[str, bool] = {}

        def build(_txn: Any) -> None:
            found["port"] = self._drop_port(name)

        self.transact(build, _Deadline(self.timeout))
        return found.get("port", False)

    def port_info(self, name: str) -> PortInfo | None:
        for port in self._rows("Port"):
            if port.name != name:
                continue
            bridge = next((b.name for b in self._rows("Bridge")
                           if any(p.uuid == port.uuid for p in b.ports)), "")
            iface = self._iface(name)
            ofport = iface.ofport[0] if iface is not None and iface.ofport else -1
            return PortInfo(bridge=bridge, port_ids=dict(port.external_ids),
                            iface_ids=dict(iface.external_ids) if iface is not None else {},
                            ofport=int(ofport))
        return None


@contextmanager
def connect(remote: str, timeout: float) -> Iterator[Ovsdb]:
    db = Ovsdb(remote, timeout)
    try:
        yield db
    finally:
        db.close()
