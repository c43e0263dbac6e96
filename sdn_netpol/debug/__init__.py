"""Debugging a live or lab switch: trace one packet, select flows by policy and rule.

An I/O shell like controller/ and lab/: it talks to ovs-vswitchd (unixctl, OpenFlow dumps)
and maps what the switch says back to policies and rules with the pure core.
"""
