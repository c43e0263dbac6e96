"""OVS I/O layer: private OVS instances, dump-flows parsing and fast ofproto/trace."""

from sdn_netpol.ovs.dumpflows import DumpedFlow, parse_dump_flows
from sdn_netpol.ovs.instance import OF_VERSION, OvsError, OvsInstance
from sdn_netpol.ovs.trace import Tracer, TraceResult, parse_trace

__all__ = [
    "OF_VERSION",
    "DumpedFlow",
    "OvsError",
    "OvsInstance",
    "TraceResult",
    "Tracer",
    "parse_dump_flows",
    "parse_trace",
]
