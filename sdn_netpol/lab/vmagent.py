"""The command agent inside a kernel-datapath VM (issue 16): the host's only way in.

Runs as the last step of the guest's init (scripts/vm-guest-init.sh), with the image's
venv python and the standard library only (project modules only through ``call``). It
talks JSON lines over the virtio-serial port ``sdn-netpol.ctl``, which qemu exposes on the
host as a unix socket (``-chardev socket,server=on``): one request, then its one reply, in
order.

Why a virtio-serial port and not the serial console: it is a clean byte stream of its own
(no kernel messages, no echo, no line discipline), it survives the host reconnecting, and
a blocked write waits for the host instead of losing data. Requests:

* ``{"op": "run", "argv": [...], "stdin": str|null, "timeout": s, "env": {...}}`` →
  ``{"rc": n, "stdout": str, "stderr": str}`` (``rc`` -1 on a timeout or a failed exec);
* ``{"op": "spawn", "argv": [...], "log": path, "env": {...}}`` → ``{"pid": n}``: detached,
  its own session, stdout and stderr appended to ``log``;
* ``{"op": "write", "path": p, "data": str}`` → ``{}`` (atomic: temporary file + rename);
* ``{"op": "call", "module": m, "command": c, "request": {...}}`` → ``{"result": ...}``:
  ``m.COMMANDS[c](request)`` in the agent's own process (the project's modules are imported
  once: a fresh Python under TCG spends seconds importing them; sdn_netpol/lab/vmguest.py);
* ``{"op": "exit"}`` → ``{}``, then the agent ends and the guest powers off.

A second port, ``sdn-netpol.ovs`` (``relay.sock`` on the host), carries bytes to and from
ovs-vswitchd's unixctl socket untouched (:func:`relay`).

Every reply also carries ``"id"`` (the request's) and, on an agent-side error, ``"fault"``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PORT_NAME = "sdn-netpol.ctl"
RELAY_PORT_NAME = "sdn-netpol.ovs"  # bytes to and from ovs-vswitchd's unixctl socket
OVS_RUNDIR = Path("/var/run/openvswitch")


def find_port(name: str = PORT_NAME) -> Path:
    for entry in Path("/sys/class/virtio-ports").glob("*/name"):
        if entry.read_text().strip() == name:
            return Path("/dev") / entry.parent.name
    raise FileNotFoundError(f"no virtio-serial port named {name}")


def unixctl_path(target: str) -> str:
    """A socket path, or a daemon name: ``/var/run/openvswitch/NAME.PID.ctl``."""
    if "/" in target:
        return target
    pid = (OVS_RUNDIR / f"{target}.pid").read_text().strip()
    return str(OVS_RUNDIR / f"{target}.{pid}.ctl")


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "run":
        try:
            # Never the init's console: no stdin given means /dev/null, and a session of its own
            # (no controlling terminal; `sdn-netpol trace` hung on the console otherwise).
            feed: dict[str, Any] = ({"input": request["stdin"]} if request.get("stdin") is not None
                                    else {"stdin": subprocess.DEVNULL})
            proc = subprocess.run(
                request["argv"], capture_output=True, text=True, timeout=request.get("timeout", 60),
                env=_env(request.get("env")), check=False, start_new_session=True, **feed,
            )
        except subprocess.TimeoutExpired:
            return {"rc": -1, "stdout": "", "stderr": f"timed out after {request.get('timeout', 60)} s"}
        except OSError as exc:
            return {"rc": -1, "stdout": "", "stderr": str(exc)}
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    if op == "spawn":
        Path(request["log"]).parent.mkdir(parents=True, exist_ok=True)
        with open(request["log"], "ab") as log:
            child = subprocess.Popen(
                request["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=_env(request.get("env")), start_new_session=True, close_fds=True,
            )
        return {"pid": child.pid}
    if op == "write":
        path = Path(request["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(request["data"])
        tmp.rename(path)
        return {}
    if op == "call":
        commands = importlib.import_module(request["module"]).COMMANDS
        return {"result": commands[request["command"]](request.get("request", {}))}
    if op == "exit":
        return {}
    raise ValueError(f"unknown op {op!r}")


def serve(port: Path) -> None:
    fd = os.open(port, os.O_RDWR)
    pending = bytearray()

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]

    send({"hello": os.uname().nodename})
    while True:
        while b"\n" not in pending:
            chunk = os.read(fd, 65536)
            if not chunk:  # the host is not connected (yet, or any more): wait for it
                time.sleep(0.1)
                continue
            pending.extend(chunk)
        line, _, rest = bytes(pending).partition(b"\n")
        pending = bytearray(rest)
        request: Any = {}
        try:
            request = json.loads(line)
            reply = handle(request)
        except BaseException as exc:  # any fault goes back to the host; the agent lives on
            reply = {"fault": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}"}
        request = request if isinstance(request, dict) else {}
        reply["id"] = request.get("id")
        send(reply)
        if request.get("op") == "exit":
            return
        reap()


def reap() -> None:
    """Spawned children that ended: the agent is their parent (PID 1 is the init shell)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def relay(port: Path, target: str = "ovs-vswitchd") -> None:
    """Bytes between the virtio-serial port ``sdn-netpol.ovs`` and ovs-vswitchd's unixctl
    socket, untouched: the host speaks JSON-RPC to vswitchd as if it were local (its
    :class:`~sdn_netpol.ovs.trace.UnixctlChannel`), so ``ofproto/trace`` by the thousand
    costs no decoding here (a differential run traces ~20,000 packets). The unixctl
    connection is opened when the host first sends, and again after vswitchd closed it."""
    fd = os.open(port, os.O_RDWR)
    conn: socket.socket | None = None
    while True:
        readable = [fd] + ([conn] if conn is not None else [])
        ready, _, _ = select.select(readable, [], [], 1.0)
        if fd in ready:
            data = os.read(fd, 65536)
            if not data:  # the host is not connected
                time.sleep(0.1)
                continue
            if conn is None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(unixctl_path(target))
            conn.sendall(data)
        if conn is not None and conn in ready:
            data = conn.recv(65536)
            if not data:
                conn.close()
                conn = None
                continue
            while data:
                data = data[os.write(fd, data):]


def main() -> int:
    with contextlib.suppress(FileNotFoundError):  # a VM booted without the relay port
        threading.Thread(target=relay, args=(find_port(RELAY_PORT_NAME),), daemon=True).start()
    serve(find_port())
    return 0


if __name__ == "__main__":
    sys.exit(main())
