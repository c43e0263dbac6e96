"""The system OVS inside a kernel-datapath VM, driven from the host through the VM's agent.

Mirrors the parts of :class:`sdn_netpol.ovs.OvsInstance` and :class:`sdn_netpol.ovs.Tracer`
that the differential tests, the lab's debug commands and the pipeline checks use, so the
same code drives a userspace OVS on the host or a kernel-datapath OVS in a VM. Bridges here
are ``datapath_type=system``: the kernel's openvswitch module, nf_conntrack, kernel VXLAN.
``ofproto/trace`` goes straight to the guest's ovs-vswitchd through the agent's byte relay.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdn_netpol.lab.vm import Vm
from sdn_netpol.ovs.instance import OF_VERSION, BridgeCommands, OvsError
from sdn_netpol.ovs.trace import TraceResult, UnixctlChannel, parse_trace, trace_args


class VmSwitch(BridgeCommands):
    """``ovs-vsctl``/``ovs-ofctl``/``ovs-appctl`` on the VM's system OVS; bridges are
    created on the kernel datapath."""

    datapath_type = "system"

    def __init__(self, vm: Vm, timeout: float = 120.0) -> None:
        self.vm = vm
        self.timeout = timeout

    def _tool(self, argv: Sequence[str], stdin: str | None = None) -> str:
        result = self.vm.run(argv, stdin=stdin, timeout=self.timeout)
        if result.rc != 0:
            raise OvsError([f"{self.vm.name}:", *argv], result.rc, result.stderr)
        return result.stdout

    def vsctl(self, *args: str) -> str:
        return self._tool(["ovs-vsctl", "--timeout=60", *args])

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        return self._tool(["ovs-ofctl", "-O", OF_VERSION, *args], stdin=stdin)

    def appctl(self, *args: str) -> str:
        return self._tool(["ovs-appctl", "--timeout=60", *args])


class VmTracer:
    """``ofproto/trace`` in the VM, like :class:`sdn_netpol.ovs.Tracer` on the host: JSON-RPC
    straight to the guest's ovs-vswitchd over the agent's byte relay (``relay.sock``), one
    connection kept open."""

    def __init__(self, vm: Vm, timeout: float = 60.0) -> None:
        self.vm = vm
        self._channel = UnixctlChannel(str(vm.dir / "relay.sock"), timeout)

    def trace(self, bridge: str, flow: str, ct_next: Sequence[str] = ()) -> TraceResult:
        return parse_trace(self.call("ofproto/trace", *trace_args(bridge, flow, ct_next)), bridge)

    def call(self, command: str, *args: str) -> str:
        error, result = self._channel.transact(command, args)
        if error is not None:
            raise OvsError([f"{self.vm.name}:", "unixctl", command, *args], 2, error)
        return result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VmTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
