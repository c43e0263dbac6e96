"""CNI error values and the codes the spec assigns to them.

Every failure of the plugin ends as one `CniError`, printed by `plugin.main` as the spec's
error JSON: runtimes (kubelet via containerd/CRI-O) parse that object, so a traceback or
plain text on stdout would be reported as "failed to decode" instead of the real cause.
"""
from __future__ import annotations

from typing import Any

# Codes 1-99 are reserved by the CNI spec 1.0.0 ("Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11

# 100+ are ours (the spec leaves them to plugins).
INTERNAL = 100
IPAM_FAILURE = 101
INTERFACE_FAILURE = 102
OVSDB_FAILURE = 103
CHECK_FAILED = 104


class CniError(Exception):
    """A failure the runtime should see as a CNI error object.

    `details` is free text for humans (the spec only asks for a string); it carries the
    lower-level cause, e.g. the IPAM plugin's own message or the netlink errno.
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        """The spec's error object; `details` is omitted when empty, as the spec allows."""
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"[{self.code}] {self.msg}" + (f": {self.details}" if self.details else "")
