"""Setting up a real node: the integration bridge and the CNI plugin on the host.

What the DaemonSet's init containers run (`sdn-netpol node …`), and what the lab shares
with them so that a lab node's bridge is a real node's bridge.
"""
