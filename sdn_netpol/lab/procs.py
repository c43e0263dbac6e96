"""Long-running lab processes: start them detached inside a netns, find them, stop them.

Servers and controllers must outlive the CLI command that started them, so they get a
session of their own. Every one of them carries a marker in its argv (the workdir, as
`--lab=DIR`, `dir:DIR/manifests` or `--pidfile=DIR/...`): leftovers of a crashed lab are
found by that marker, never by a broad name, and a recycled pid is never killed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sdn_netpol.ovs.instance import process_alive, terminate


def spawn(netns: str | None, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
          stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start `argv` detached (own session) inside `netns`; stderr (and stdout unless piped)
    go to `log`."""
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if stdout_pipe else out, stderr=out,
            env=env, start_new_session=True, close_fds=True,
        )


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int | None) -> bool:
    """Exists and is not a zombie (detached children are reaped late by init here)."""
    return pid is not None and pid > 0 and process_alive(pid)


def has_marker(pid: int, markers: Sequence[str]) -> bool:
    return any(arg.startswith(m) or m in arg for arg in cmdline(pid) for m in markers)


def find_marked(markers: Sequence[str]) -> list[int]:
    """Live processes (not us) whose argv carries one of `markers`."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != me and alive(int(entry.name)) \
                and has_marker(int(entry.name), markers):
            found.append(int(entry.name))
    return found


def stop(pids: Sequence[int | None], markers: Sequence[str], timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL the given pids, but only those still carrying a marker."""
    mine = [p for p in pids if p and alive(p) and has_marker(p, markers)]
    if mine:
        terminate(mine, timeout)


def reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate()` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
