#!/usr/bin/env python3
"""Refresh the real dump and traces in docs/pipeline.md from flows/test-network-policy/node1.flows.

Loads the golden flows into a private userspace OVS exactly as the doc describes and
rewrites the three code blocks between `<!-- generated:NAME -->` markers. Run as root:
`.venv/bin/python scripts/pipeline_doc.py` (part of `make flows`).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdn_netpol.lab import netns  # noqa: E402
from sdn_netpol.ovs import OvsInstance  # noqa: E402

FLOWS = ROOT / "flows" / "test-network-policy" / "node1.flows"
DOC = ROOT / "docs" / "pipeline.md"
PORTS = {f"pod{n}": n for n in range(1, 6)} | {"gw0": 101}
TRACES = {
    "allowed": ("in_port=100,tcp,nw_src=10.244.2.10,nw_dst=10.244.1.10,tp_dst=6379,nw_ttl=64", "trk,new"),
    "denied": ("in_port=5,dl_src=02:00:0a:f4:01:0e,dl_dst=0a:00:00:00:00:fe,tcp,nw_src=10.244.1.14,"
               "nw_dst=10.244.1.10,tp_dst=6379,nw_ttl=64", "trk,new"),
}
#: an established packet of the allowed connection, its ct_label stamped with db's (port 3)
#: current ingress fingerprint, read from the golden IngressFast flow: the fast path
_DB_FAST = re.compile(r"table=56, priority=200,ct_label=(0x[0-9a-f]+)/0x[0-9a-f]+,reg2=0x3,")
_STATS = re.compile(r" duration=[^,]*,| n_packets=[^,]*, n_bytes=[^,]*,| idle_age=[^,]*,")


def main() -> None:
    # One userspace ovs-vswitchd per netns (LAB-NOTES): a netns of its own, so a lab or a
    # test run on this machine keeps its OVS and this one does not meet theirs.
    name = f"pipeline-doc-{os.getpid()}"
    netns.create(name)
    try:
        with tempfile.TemporaryDirectory() as rundir:
            ovs = OvsInstance.start(Path(rundir), netns=name)
            try:
                blocks = _generate(ovs)
            finally:
                ovs.stop()
    finally:
        netns.remove(name)
    text = DOC.read_text()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n```\n).*?(\n```)", re.S)
        text, count = pattern.subn(lambda m, b=body: m.group(1) + b + m.group(2), text)
        if count != 1:
            raise SystemExit(f"{DOC}: marker generated:{name} not found exactly once")
    DOC.write_text(text)
    print(f"refreshed {', '.join(blocks)} in {DOC.relative_to(ROOT)}")


def _generate(ovs: OvsInstance) -> dict[str, str]:
    ovs.add_bridge("br-int")
    args: list[str] = []
    for name, ofport in PORTS.items():
        args += ["--", "add-port", "br-int", name, "--", "set", "Interface", name, "type=internal",
                 f"ofport_request={ofport}"]
    args += ["--", "add-port", "br-int", "tun0", "--", "set", "Interface", "tun0", "type=vxlan",
             "options:remote_ip=flow", "options:key=flow", "ofport_request=100"]
    ovs.vsctl(*args)
    ovs.replace_flows("br-int", FLOWS.read_text())
    dump = ovs.ofctl("--no-names", "dump-flows", "br-int")
    blocks = {"dump": "\n".join([
        f"$ ovs-ofctl -O OpenFlow15 --bundle replace-flows br-int {FLOWS.relative_to(ROOT)}",
        "$ ovs-ofctl -O OpenFlow15 --no-names dump-flows br-int \\",
        "    | sed -E 's/ duration=[^,]*,//; s/ n_packets=[^,]*, n_bytes=[^,]*,//; s/ idle_age=[^,]*,//'",
        *(_STATS.sub("", line) for line in dump.rstrip().splitlines()),
    ])}
    found = _DB_FAST.search(FLOWS.read_text())
    if found is None:
        raise SystemExit(f"{FLOWS}: no IngressFast flow for port 3")
    traces = {**TRACES, "established": (f"ct_label={found[1]},{TRACES['allowed'][0]}", "trk,est")}
    for name, (flow, ct) in traces.items():
        trace = ovs.appctl("ofproto/trace", "br-int", flow, "--ct-next", ct)
        blocks[name] = f"$ ovs-appctl ofproto/trace br-int \\\n    '{flow}' --ct-next {ct}\n\n" + trace.rstrip()
    return blocks


if __name__ == "__main__":
    main()
