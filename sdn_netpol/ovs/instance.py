"""A private Open vSwitch instance (ovsdb-server + ovs-vswitchd) in a directory of its own.

Why private instances: these machines have no OVS kernel module, so every bridge uses the
userspace datapath (``datapath_type=netdev``), and only one userspace OVS can live in a
network namespace (each creates tap devices such as ``ovs-netdev``).  Tests, the lab and the
controller therefore each run their own daemons, with every file (DB, sockets, pidfiles,
logs) under one ``rundir`` and ``OVS_RUNDIR``/``OVS_DBDIR``/``OVS_LOGDIR``/
``OVS_SYSCONFDIR`` pointing there, so the stock ``ovs-*`` tools find the instance from any
namespace (unix sockets are not tied to a network namespace).

Daemons are found by scanning ``/proc`` for an ``--pidfile=RUNDIR/...`` argument rather than
by trusting pidfiles: a crash leaves stale pidfiles, and a recycled pid must never be killed.
Detached daemons are reparented to PID 1, which reaps them late on these VMs, so "stopped"
means gone *or zombie*.

OpenFlow version: every ``ovs-ofctl`` call uses ``-O OpenFlow15`` (see :data:`OF_VERSION`).
Measured on OVS 3.1: bundles are native from OF1.4 (``--bundle`` is atomic: one bad flow
fails with ``OFPBFC_MSG_FAILED`` and nothing is installed); conjunction, ``conj_id``,
``ct(...)``, ``ct_state`` and ``set_field:...->tun_dst`` work in OF1.0/1.3/1.4/1.5 alike; but
only OF1.5 dumps every register/field load in one canonical form (``set_field:``), where
OF1.3/1.4 keep ``load:`` as written and OF1.0 even turns ``goto_table:N`` into
``resubmit(,N)``.  An OF1.5 dump is canonical whichever version installed the flow.
See docs/ovs-canonical-forms.md.

Measured (2 vCPU VM, other jobs running): start in a netns (DB create, both daemons, init)
0.05-0.13 s median, 0.19 s worst of 10; stop with a bridge 0.01-0.02 s (SIGTERM, then
gone-or-zombie); restart_vswitchd with one bridge 0.18-0.21 s; add_bridge ~0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from sdn_netpol.node.bridge import PROTOCOLS
from sdn_netpol.ovs.dumpflows import DumpedFlow, parse_dump_flows

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OF_VERSION = "OpenFlow15"
BRIDGE_PROTOCOLS = PROTOCOLS  # one definition: node/bridge.py
TOOL_TIMEOUT = 30.0  # seconds for any one ovs-* client call
READY_TIMEOUT = 10.0  # seconds for a daemon to open its sockets
DAEMONS = ("ovs-vswitchd", "ovsdb-server")  # stop order: the switch before its database
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class OvsError(RuntimeError):
    """An ``ovs-*`` tool (or a unixctl command) failed; carries what was run and why."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = tuple(cmd)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(self.cmd)!r} failed (exit {returncode}): {stderr.strip()}")


def run_tool(
    cmd: Sequence[str], env: dict[str, str], stdin: str | None = None,
    timeout: float = TOOL_TIMEOUT,
) -> str:
    """Run one command, return stdout; any failure (exit, timeout) becomes :class:`OvsError`."""
    try:
        proc = subprocess.run(
            list(cmd), input=stdin, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OvsError(cmd, -1, f"timed out after {timeout} s") from exc
    except OSError as exc:
        raise OvsError(cmd, -1, str(exc)) from exc
    if proc.returncode != 0:
        raise OvsError(cmd, proc.returncode, proc.stderr)
    return proc.stdout


# ---------------------------------------------------------------- process helpers


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (zombies are as good as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return "Z" not in line.split()[1]
    return True


def daemon_pids(rundir: Path, name: str) -> list[int]:
    """Live ``name`` daemons started with ``--pidfile=RUNDIR/NAME.pid`` (scan of /proc)."""
    wanted = f"--pidfile={rundir}/{name}.pid".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in args and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` with a short back-off; True if it held before ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def terminate(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM, wait for gone-or-zombie, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if _wait_until(lambda: not any(process_alive(p) for p in pids), timeout):
            return
    raise OvsError(["kill", "-9", *map(str, pids)], -1, "processes survived SIGKILL")


def _socket_accepts(path: Path) -> bool:
    """True once a unix socket exists and accepts a connection (not merely a stale file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- the instance


class BridgeCommands:
    """Bridge and flow-table commands built on ``vsctl``/``ofctl``: the same for a private
    userspace OVS here (:class:`OvsInstance`) and a VM's kernel-datapath OVS driven through
    its agent (sdn_netpol/lab/vmovs.py)."""

    datapath_type: ClassVar[str] = "netdev"

    def vsctl(self, *args: str) -> str:
        raise NotImplementedError

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        raise NotImplementedError

    def add_bridge(
        self, name: str, datapath_id: int | None = None, fail_mode: str = "secure"
    ) -> None:
        """A bridge of this switch's datapath type, in one DB transaction so vswitchd never
        sees a half-configured (default-datapath, standalone) bridge."""
        settings = [
            f"datapath_type={self.datapath_type}", f"fail_mode={fail_mode}", f"protocols={BRIDGE_PROTOCOLS}",
            "other_config:disable-in-band=true",
        ]
        if datapath_id is not None:
            settings.append(f"other_config:datapath-id={datapath_id:016x}")
        self.vsctl("--", "add-br", name, "--", "set", "Bridge", name, *settings)

    def replace_flows(self, bridge: str, flows_text: str) -> None:
        """Atomically make ``flows_text`` the bridge's whole flow table (one OF1.5 bundle)."""
        self.ofctl("--bundle", "replace-flows", bridge, "-", stdin=flows_text)

    def add_flows(self, bridge: str, flows_text: str) -> None:
        """Atomically add ``flows_text`` (one OF1.5 bundle: all or nothing)."""
        self.ofctl("--bundle", "add-flows", bridge, "-", stdin=flows_text)

    def dump_flows(self, bridge: str) -> list[DumpedFlow]:
        """All flows, port numbers not names, sorted by (table, -priority, match, actions)
        because OVS dumps in hash order."""
        flows = parse_dump_flows(self.ofctl("--no-names", "dump-flows", bridge))
        return sorted(flows, key=lambda f: (f.table, -f.priority, f.match, f.actions))


@dataclass(frozen=True)
class OvsInstance(BridgeCommands):
    """Handle on the daemons of one ``rundir``; cheap to copy, holds no connections.

    ``OvsInstance(rundir)`` attaches to an instance that is already running;
    :meth:`start` creates one.  ``vswitchd_args`` are extra ovs-vswitchd arguments
    (e.g. ``--enable-dummy=override`` for the dummy datapath of OVS's own tests), used
    again by :meth:`restart_vswitchd`.
    """

    rundir: Path
    netns: str | None = None
    vswitchd_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Daemons are recognised by the exact rundir in their argv: always use one spelling.
        object.__setattr__(self, "rundir", Path(self.rundir).resolve())
        object.__setattr__(self, "vswitchd_args", tuple(self.vswitchd_args))

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls, rundir: Path, netns: str | None = None, vswitchd_args: Sequence[str] = (),
    ) -> OvsInstance:
        """Fresh DB + ovsdb-server + ovs-vswitchd; returns once both answer on their sockets."""
        inst = cls(Path(rundir), netns, tuple(vswitchd_args))
        inst.rundir.mkdir(parents=True, exist_ok=True)
        inst.stop()  # a crashed run may have left live daemons behind
        inst._remove_runtime_files(("*.pid", "*.ctl", "*.sock", "*.mgmt", "*.snoop"))
        inst._remove_runtime_files(("conf.db", ".conf.db.~lock~"))
        try:
            run_tool(["ovsdb-tool", "create", str(inst.db_path), str(SCHEMA)], inst.env)
            inst._start_ovsdb()
            inst.vsctl("--no-wait", "init")
            inst._start_vswitchd()
        except BaseException:
            inst.stop()
            raise
        return inst

    def stop(self, timeout: float = 5.0) -> None:
        """Kill both daemons (switch first); idempotent, safe on a half-started instance."""
        for name in DAEMONS:
            terminate(daemon_pids(self.rundir, name), timeout)

    def restart_vswitchd(self) -> None:
        """Kill and restart ovs-vswitchd only: the DB (bridges, ports) stays, flows are lost.

        Returns once every bridge of the DB is back, i.e. its ``BR.mgmt`` socket accepts.
        """
        terminate(daemon_pids(self.rundir, "ovs-vswitchd"))
        self._remove_runtime_files(("ovs-vswitchd.*", "*.mgmt", "*.snoop"), keep_logs=True)
        self._start_vswitchd()
        for bridge in self.vsctl("list-br").split():
            self._wait_socket(self.rundir / f"{bridge}.mgmt", f"bridge {bridge}")

    def restart_ovsdb(self) -> None:
        """Start ovsdb-server again on the existing DB (after it died or was killed): the
        bridges and ports stay; ovs-vswitchd reconnects on its own."""
        terminate(daemon_pids(self.rundir, "ovsdb-server"))
        self._remove_runtime_files(("ovsdb-server.*", "db.sock"), keep_logs=True)
        self._start_ovsdb()

    def __enter__(self) -> OvsInstance:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ paths and environment

    @property
    def env(self) -> dict[str, str]:
        """Environment for any ``ovs-*`` tool so that it finds this instance."""
        env = dict(os.environ)
        env["PATH"] = f"{env.get('PATH', '')}:{_SYSTEM_PATH}".lstrip(":")
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
            env[var] = str(self.rundir)
        return env

    @property
    def db_path(self) -> Path:
        return self.rundir / "conf.db"

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def vswitchd_ctl(self) -> Path:
        """The unixctl socket of ovs-vswitchd: ``ovs-vswitchd.<pid>.ctl`` (pid from pidfile)."""
        pidfile = self.rundir / "ovs-vswitchd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"ovs-vswitchd is not running in {self.rundir}") from exc
        return self.rundir / f"ovs-vswitchd.{pid}.ctl"

    # ------------------------------------------------------------ tools

    def vsctl(self, *args: str) -> str:
        """``ovs-vsctl``; waits for vswitchd to apply changes unless ``--no-wait`` is given."""
        return run_tool(
            ["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=10", *args], self.env
        )

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        """``ovs-ofctl -O OpenFlow15`` (why OF1.5: see the module docstring)."""
        return run_tool(["ovs-ofctl", "-O", OF_VERSION, *args], self.env, stdin=stdin)

    def appctl(self, *args: str, target: str = "ovs-vswitchd") -> str:
        """``ovs-appctl`` to ``target`` (a daemon name resolved in rundir, or a socket path)."""
        return run_tool(["ovs-appctl", "-t", target, "--timeout=10", *args], self.env)

    # ------------------------------------------------------------ internals

    def _start_ovsdb(self) -> None:
        self._launch("ovsdb-server", [
            str(self.db_path), f"--remote=punix:{self.db_sock}",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            f"--unixctl={self.rundir}/ovsdb-server.ctl",
        ])
        self._wait_socket(self.db_sock, "ovsdb-server")

    def _start_vswitchd(self) -> None:
        self._launch("ovs-vswitchd", [f"unix:{self.db_sock}", *self.vswitchd_args])
        if not _wait_until(lambda: self.rundir.joinpath("ovs-vswitchd.pid").exists(), 5.0):
            raise OvsError(["ovs-vswitchd"], -1, f"no pidfile; see {self._log('ovs-vswitchd')}")
        self._wait_socket(self.vswitchd_ctl, "ovs-vswitchd")

    def _launch(self, name: str, args: list[str]) -> None:
        """Start one daemon detached (inside ``netns`` if set); its early stderr goes to a
        file, not a pipe, so a detached child can never keep our read end open."""
        cmd = [
            name, *args, f"--pidfile={self.rundir}/{name}.pid",
            f"--log-file={self._log(name)}", "--detach", "--no-chdir", "-vconsole:off",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        errfile = self.rundir / f"{name}.stderr"
        with errfile.open("w") as err:
            try:
                proc = subprocess.run(
                    cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=err, timeout=READY_TIMEOUT, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OvsError(cmd, -1, str(exc)) from exc
        if proc.returncode != 0:
            raise OvsError(cmd, proc.returncode, errfile.read_text())

    def _log(self, name: str) -> Path:
        return self.rundir / f"{name}.log"

    def _wait_socket(self, path: Path, what: str) -> None:
        if not _wait_until(lambda: _socket_accepts(path), READY_TIMEOUT):
            raise OvsError([what], -1, f"{path} not ready after {READY_TIMEOUT} s")

    def _remove_runtime_files(self, patterns: Sequence[str], keep_logs: bool = False) -> None:
        for pattern in patterns:
            for path in self.rundir.glob(pattern):
                if keep_logs and path.suffix in (".log", ".stderr"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
