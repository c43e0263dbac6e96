"""The br-int pipeline in one place: tables, registers, priorities, cookies, conjunction ids.

Everything another module needs to agree on lives here (docs/pipeline.md explains it with
a real dump). Nothing here builds flows.

Packet walk:
  Classifier → SpoofGuard → (ARP: ArpResponder; NS: NdpResponder → NdpAdvertisement)
    → Conntrack → ConntrackState → (established TCP/UDP: EgressFast)
    → EgressAdmin → EgressRule → EgressDefault → EgressBaseline → L3Forwarding → IngressFast
    → IngressAdmin → IngressRule → IngressDefault → IngressBaseline → Commit (→ EgressStamp,
    IngressStamp) → Output
The Admin and Baseline tiers of cluster-wide policies (compiler/admin_flows.py) wrap the
NetworkPolicy tables: an Admin Allow skips to L3Forwarding/Commit, a Pass goes on to the
NetworkPolicy table, and only packets no NetworkPolicy isolates reach the Baseline table.
Replies and related packets skip both policy directions (reg3 bit 0); packets in the
original direction of an established connection are checked again unless their ct_label
still holds the pods' current verdict fingerprints (EgressFast/IngressFast, TCP and UDP
only: compiler/fastpath.py), so withdrawing an allow cuts the connection, and SCTP
(tracked without ports by OVS 3.1) stays per-port.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum


class Table(IntEnum):
    CLASSIFIER = 0
    SPOOF_GUARD = 10
    ARP_RESPONDER = 20
    NDP_RESPONDER = 21  # a Neighbor Solicitation becomes the gateway's Advertisement...
    NDP_ADVERTISEMENT = 22  # ...finished here: OVS lets only an NA-matching flow write nd_tll
    CONNTRACK = 30
    CONNTRACK_STATE = 31
    SCTP_REPLY = 32  # learned reply 5-tuples of SCTP associations policy allowed
    SCTP_REPLY_VERDICT = 33
    EGRESS_FAST = 36  # established TCP/UDP whose ct_label egress half is the pod's fingerprint: skip 38..42
    EGRESS_ADMIN = 38  # the Admin tier of cluster-wide policies, before NetworkPolicy
    EGRESS_RULE = 40
    EGRESS_DEFAULT = 41
    EGRESS_BASELINE = 42  # the Baseline tier: reached only by pods no NetworkPolicy isolates
    L3_FORWARDING = 50
    INGRESS_FAST = 56  # ...and the ingress half: skip 58..62
    INGRESS_ADMIN = 58
    INGRESS_RULE = 60
    INGRESS_DEFAULT = 61
    INGRESS_BASELINE = 62
    COMMIT = 70
    AUDIT_EGRESS = 71  # resubmitted from Commit: copies of allowed new connections to the controller
    AUDIT_INGRESS = 72
    EGRESS_STAMP = 73  # resubmitted from Commit: ct(commit) writing the source pod's egress fingerprint
    INGRESS_STAMP = 74  # ...and the destination pod's ingress fingerprint
    OUTPUT = 80


class Priority(IntEnum):
    MISS = 0
    DEFAULT = 100
    AUDIT_DENY = 110  # above the isolation drop: a new connection's packet goes to the controller
    AUDIT_COMMIT = 205  # above the plain +new commit, only for packets of audited pods
    AUDIT_COMMIT_SCTP = 215  # above the SCTP commit (210)
    NORMAL = 200
    COMMIT_STAMP_NEW = 201  # Commit: a policy-checked +new packet, committed with the fingerprints
    COMMIT_STAMP_RECHECKED = 202  # Commit: an established packet that walked the rules, stamped again
    NODE_ROUTE = 150  # a remote node's pod CIDR, below every exact pod route
    CONJUNCTION = 200  # a conjunction's clause and conj_id flows share one priority: this, or a band below (bands.py)
    DIRECT_ALLOW = 300  # single-dimension allows: above every conjunction, all mean "allow"
    FAST_ELIGIBLE = 350  # ConntrackState: +est-rpl TCP/UDP may take the fast path (below replies)
    BYPASS = 400
    FORBIDDEN = 410  # SpoofGuard: destinations nothing may be routed to (loopback, tunnel endpoints)
    ND_GUARD = 420  # SpoofGuard: Neighbor Discovery from anyone is dropped (RS, RA, NS, NA, redirect)...
    ND_SOLICIT = 430  # ...but a Neighbor Solicitation from a port's own address goes to the responder
    SCTP_REPLY = 450  # above the generic reply bypass: SCTP replies must prove their ports
    INVALID = 500
    TIER_BYPASS = 65535  # Admin tables: replies and node-local traffic, above every admin rule


#: Admin and Baseline tables: a rule's priority is TIER_RULE_BASE + its rank's band and place
#: (compiler/admin_flows.py), 1 .. 64128, below TIER_BYPASS.
TIER_RULE_BASE = 1
TIER_BAND = 64  # rules of one policy priority a band holds (more: ranks are dense instead)
TIER_BANDS = 1002  # policy priorities 0..1000, and the BaselineAdminNetworkPolicy (1001)


# Registers (32-bit NXM registers reg0..reg7).
REG_PORT_CLASS = "reg0"  # where the packet entered: see PortClass
REG_OUT_PORT = "reg2"  # OpenFlow port chosen by L3Forwarding, used by ingress rules and Output
REG_FLAGS = "reg3"  # bit 0: reply/related, policy bypassed; bit 2: a learned SCTP reply; 3, 4: fast path


class PortClass(IntEnum):
    """reg0 values. Bit 0 set = 'local side' (pod or gateway): may be routed to a tunnel."""

    POD = 0x1
    TUNNEL = 0x2
    GATEWAY = 0x3


LOCAL_SIDE_MASK = 0x1
FLAG_BYPASS = 0x1
FLAG_SCTP_REPLY_BIT = 2
FLAG_SCTP_REPLY = 1 << FLAG_SCTP_REPLY_BIT
FLAG_FAST_ELIGIBLE = 1 << 3  # an original-direction +est TCP/UDP packet: its ct_label may be trusted
FLAG_RECHECKED = 1 << 4  # ...that walked a direction's rules: Commit stamps its ct_label again
FAST_PROTOCOLS = ("tcp", "udp", "tcp6", "udp6")  # never SCTP: OVS 3.1 tracks it without ports

# ct_label (128 bits): the verdict fingerprints a connection was last admitted under
# (compiler/fastpath.py). Bits 0..63: the source pod's egress fingerprint, written on the
# source pod's node; bits 64..127: the destination pod's ingress fingerprint, on its node.
FINGERPRINT_BITS = 64
FINGERPRINT_MASK = (1 << FINGERPRINT_BITS) - 1
LABEL_SHIFT = {"Egress": 0, "Ingress": FINGERPRINT_BITS}


def label_half(direction: str, fingerprint: int) -> tuple[int, int]:
    """(value, mask) of ct_label holding `fingerprint` in `direction`'s half."""
    shift = LABEL_SHIFT[direction]
    return fingerprint << shift, FINGERPRINT_MASK << shift
SCTP_REPLY_IDLE_TIMEOUT = 300  # seconds; SCTP heartbeats (30 s by default) keep it alive

CT_ZONE = 1  # one zone for the bridge: pod addresses are unique cluster-wide
TUNNEL_VNI = 0x1

GATEWAY_MAC = "0a:00:00:00:00:fe"

# Cookie layout (64 bits):  [63:56] magic  [55:48] category  [47:16] object id  [15:0] rule
COOKIE_MAGIC = 0x5E
MAGIC_SHIFT, CATEGORY_SHIFT, OBJECT_SHIFT = 56, 48, 16
RULE_EGRESS_BIT = 0x8000
RULE_INDEX_MASK = 0x7FFF
MASK_MAGIC = 0xFF << MAGIC_SHIFT
MASK_CATEGORY = MASK_MAGIC | (0xFF << CATEGORY_SHIFT)
MASK_OBJECT = MASK_CATEGORY | (0xFFFFFFFF << OBJECT_SHIFT)
MASK_ALL = (1 << 64) - 1


class CookieCategory(IntEnum):
    PIPELINE = 0x01  # fixed flows every node has
    POD = 0x02  # per local pod: classifier, spoofguard, forwarding, output (object = pod)
    REMOTE = 0x03  # routes to pods on other nodes (object = pod)
    ISOLATION = 0x04  # default drops of isolated pods (object = pod)
    RULE = 0x10  # one policy rule's flows (object = policy, rule = direction + index)
    LEARNED = 0x05  # SCTP reply flows the switch learns itself: never reconciled away
    SHARED = 0x11  # a match flow carrying conjunctions of several rules
    AUDIT = 0x06  # audit-log flows (object = pod, or 0 for the Commit flows)
    FAST_PATH = 0x07  # a local pod's fast-path and stamp flows (object = pod)


# Audit log: controller(userdata=5e.XX) tags, verdict and direction of the copied packet.
AUDIT_MAGIC = 0x5E
AUDIT_TAGS: dict[tuple[str, str], int] = {
    ("denied", "egress"): 0x01, ("denied", "ingress"): 0x02,
    ("allowed", "egress"): 0x11, ("allowed", "ingress"): 0x12,
}


def audit_tag(verdict: str, direction: str) -> bytes:
    return bytes((AUDIT_MAGIC, AUDIT_TAGS[(verdict, direction)]))


def decode_audit_tag(userdata: bytes) -> tuple[str, str] | None:
    """(verdict, direction) of a packet-in's userdata, None if it is no audit tag."""
    if len(userdata) != 2 or userdata[0] != AUDIT_MAGIC:
        return None
    return next((key for key, code in AUDIT_TAGS.items() if code == userdata[1]), None)


def stable_id(text: str, bits: int = 32) -> int:
    """A hash stable across processes and restarts (unlike hash())."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)


def cookie(category: CookieCategory, object_id: int = 0, rule: int = 0) -> int:
    return (
        (COOKIE_MAGIC << MAGIC_SHIFT)
        | (int(category) << CATEGORY_SHIFT)
        | ((object_id & 0xFFFFFFFF) << OBJECT_SHIFT)
        | (rule & 0xFFFF)
    )


def policy_object_id(policy_ref: str) -> int:
    return stable_id(f"policy:{policy_ref}")


def pod_object_id(pod_ref: str) -> int:
    return stable_id(f"pod:{pod_ref}")


def rule_bits(direction: str, index: int) -> int:
    return (RULE_EGRESS_BIT if direction == "Egress" else 0) | (index & RULE_INDEX_MASK)


def rule_cookie(policy_ref: str, direction: str, index: int) -> int:
    return cookie(CookieCategory.RULE, policy_object_id(policy_ref), rule_bits(direction, index))


def policy_cookie_and_mask(policy_ref: str) -> tuple[int, int]:
    """For `ovs-ofctl dump-flows br-int cookie=C/M`: every flow of one policy's rules."""
    return cookie(CookieCategory.RULE, policy_object_id(policy_ref)), MASK_OBJECT


@dataclass(frozen=True)
class CookieInfo:
    category: CookieCategory | None
    object_id: int
    direction: str | None
    rule_index: int | None


def is_learned(value: int) -> bool:
    """Flows the switch learned itself (SCTP replies): a controller must leave them alone."""
    return value & MASK_CATEGORY == cookie(CookieCategory.LEARNED)


def decode_cookie(value: int) -> CookieInfo:
    if value >> MAGIC_SHIFT != COOKIE_MAGIC:
        return CookieInfo(None, 0, None, None)
    raw_category = (value >> CATEGORY_SHIFT) & 0xFF
    category = CookieCategory(raw_category) if raw_category in CookieCategory._value2member_map_ else None
    object_id = (value >> OBJECT_SHIFT) & 0xFFFFFFFF
    if category != CookieCategory.RULE:
        return CookieInfo(category, object_id, None, None)
    rule = value & 0xFFFF
    direction = "Egress" if rule & RULE_EGRESS_BIT else "Ingress"
    return CookieInfo(category, object_id, direction, rule & RULE_INDEX_MASK)


def conjunction_ids(keys: list[str]) -> dict[str, int]:
    """Stable 32-bit conjunction ids from content keys; collisions probe deterministically.

    Ids depend only on each key (policy, direction, rule, resolved ports), so recompiling
    an unchanged policy, or restarting, yields the same ids; keys are probed in sorted order
    so a collision (≈ n²/2³³) moves only the later key.
    """
    taken: set[int] = set()
    result: dict[str, int] = {}
    for key in sorted(set(keys)):
        candidate = stable_id(f"conj:{key}") or 1
        while candidate in taken:
            candidate = (candidate + 1) & 0xFFFFFFFF or 1
        taken.add(candidate)
        result[key] = candidate
    return result
