"""Kernel-datapath nodes as qemu VMs (issue 16): boot, command, tear down.

The image (``scripts/vm-image.sh``, cached once per machine) holds Debian 12 with Open
vSwitch, the guest kernel with its ``openvswitch`` module and a venv of the project's
dependencies; the project is shared read-only over 9p, so every VM runs this checkout's
code. Each VM:

* boots ``vmlinux`` directly (no bootloader) under TCG (``/dev/kvm`` here is a PVM
  hypervisor a stock kernel crawls under), its disk ``base.img`` with ``snapshot=on``: the
  writes go to a temporary overlay qemu keeps in the VM's own directory (``TMPDIR``), so
  nothing outside it is ever written and removing the directory removes the overlay;
* is reached only through its command agent (:mod:`sdn_netpol.lab.vmagent`) on a
  virtio-serial port, a unix socket ``ctl.sock`` on the host; its serial console goes to
  ``serial.log`` and carries the boot markers (``SDN-NETPOL-VM: ...``) the host waits for;
* has one NIC on a private UDP multicast "switch" (``-netdev socket,mcast=``) bound to the
  loopback of a network namespace of the VM group's own: VMs of one group form one L2
  segment (the underlay), nothing of it touches the root namespace, and two groups (two
  test runs) never hear each other.

Every qemu is found again by its argv (``file:VMDIR/serial.log``), never by a broad name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sdn_netpol.ovs.instance import process_alive, terminate

REPO = Path(__file__).resolve().parent.parent.parent
IMAGE_SCRIPT = REPO / "scripts" / "vm-image.sh"
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 240.0  # TCG boot to agent: 20-40 s measured; a loaded 2-core machine is slower
MARKER = "SDN-NETPOL-VM:"
MCAST_GROUP = "230.0.0.1"


class VmError(RuntimeError):
    """A VM could not be built, booted or commanded; the message says why (log tails)."""


class ChannelClosed(VmError):
    """The agent's channel closed (qemu gone, or the guest side went away)."""


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


def ensure_image(timeout: float = 1800.0) -> Path:
    """The cached image directory, built (or waited for: the build takes a lock) if need be."""
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found: install Debian's qemu-system-x86 (scripts/bootstrap.sh)")
    try:
        proc = subprocess.run(["bash", str(IMAGE_SCRIPT), "build"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VmError(f"{IMAGE_SCRIPT} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise VmError(f"the VM image failed to build ({IMAGE_SCRIPT}):\n"
                      + "\n".join(proc.stderr.splitlines()[-30:]))
    return Path(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the command channel


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class Agent:
    """One connection to a VM's command agent; requests are serialised (thread-safe)."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self._name = name
        self._buffer = b""
        self._lock = threading.Lock()
        self._next_id = 0
        # ids unique to this connection: a reply the agent owed an earlier, gone host process
        # arrives first on the next connection and must not pass for an answer
        self._prefix = uuid.uuid4().hex[:12]

    def request(self, wait: float, **request: Any) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            request["id"] = f"{self._prefix}-{self._next_id}"
            self._sock.sendall((json.dumps(request) + "\n").encode())
            deadline = time.monotonic() + wait
            while True:
                reply = self.read_line(deadline)
                if reply.get("id") == request["id"]:
                    break
        if "fault" in reply:
            raise VmError(f"{self._name}: agent fault on {request.get('op')}: {reply['fault']}")
        return reply

    def read_line(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise VmError(f"{self._name}: no answer from the VM's agent in time")
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ChannelClosed(f"{self._name}: the VM's agent channel closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------- one VM


@dataclass
class Vm:
    """A booted VM: run commands in it, start daemons, call OVS unixctl."""

    name: str
    dir: Path
    ip: str | None
    proc: subprocess.Popen[bytes] | None  # None: attached to a VM another process booted
    agent: Agent | None = None
    launched: float = field(default_factory=time.monotonic)
    boot_seconds: float = 0.0

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> Result:
        reply = self._agent().request(timeout + 30, op="run", argv=list(argv), stdin=stdin,
                                      timeout=timeout, env=env or {})
        return Result(int(reply["rc"]), str(reply["stdout"]), str(reply["stderr"]))

    def check(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 120.0,
              env: dict[str, str] | None = None) -> str:
        """``run`` that raises :class:`VmError` unless the command exits 0; returns stdout."""
        result = self.run(argv, stdin, timeout, env)
        if result.rc != 0:
            raise VmError(f"{self.name}: {' '.join(argv)!r} failed (exit {result.rc}): "
                          f"{result.stderr.strip()[-2000:]}")
        return result.stdout

    def spawn(self, argv: Sequence[str], log: str, env: dict[str, str] | None = None) -> int:
        return int(self._agent().request(60, op="spawn", argv=list(argv), log=log, env=env or {})["pid"])

    def call(self, module: str, command: str, request: dict[str, Any], timeout: float = 300.0) -> Any:
        """``module.COMMANDS[command](request)`` inside the agent (no new Python per call)."""
        return self._agent().request(timeout, op="call", module=module, command=command, request=request)["result"]

    def write(self, path: str, data: str) -> None:
        self._agent().request(60, op="write", path=path, data=data)

    def rss_bytes(self) -> int:
        """The qemu process's resident memory (the VM's cost on the host)."""
        pids = [self.proc.pid] if self.proc is not None else qemu_pids(self.dir.parent.parent, self.name)
        try:
            status = Path(f"/proc/{pids[0]}/status").read_text()
        except (IndexError, OSError):
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _agent(self) -> Agent:
        if self.agent is None:
            raise VmError(f"{self.name} is not booted")
        return self.agent

    def wait_booted(self, deadline: float) -> None:
        """Connect to the agent and wait for its hello; a failure marker on the serial console,
        a qemu exit or the deadline raises :class:`VmError` with the console's tail."""
        agent: Agent | None = None
        start = self.launched
        while True:
            failure = self._failure()
            if failure is not None:
                raise VmError(f"{self.name}: {failure}; serial console ({self.serial_log}):\n"
                              f"{tail(self.serial_log)}")
            if time.monotonic() >= deadline:
                raise VmError(f"{self.name} did not boot within {deadline - start:.0f} s; serial console "
                              f"({self.serial_log}):\n{tail(self.serial_log)}")
            if agent is None:
                sock = self._connect()
                if sock is None:
                    time.sleep(0.2)
                    continue
                agent = Agent(sock, self.name)
            try:
                if "hello" in agent.read_line(min(deadline, time.monotonic() + 1.0)):
                    self.agent = agent
                    self.boot_seconds = time.monotonic() - start
                    return
            except ChannelClosed:
                agent.close()
                agent = None
                time.sleep(0.2)
            except VmError:
                pass  # no hello yet

    def attach(self) -> None:
        """Connect to the agent of a VM booted (and left running) by another process."""
        if not qemu_pids(self.dir.parent.parent, self.name):
            raise VmError(f"{self.name}: its qemu is not running (see {self.serial_log})")
        sock = self._connect()
        if sock is None:
            raise VmError(f"{self.name}: cannot connect to {self.dir / 'ctl.sock'}")
        self.agent = Agent(sock, self.name)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.dir / "ctl.sock"))
        except OSError:
            sock.close()
            return None
        return sock

    def _failure(self) -> str | None:
        """The guest init's FAILED marker (it powers off right after), or qemu's exit."""
        exited = self.proc is not None and self.proc.poll() is not None
        with contextlib.suppress(OSError):
            for line in self.serial_log.read_text(errors="replace").splitlines():
                if MARKER + " FAILED" in line:
                    return line.split(MARKER, 1)[1].strip()
        if exited:
            assert self.proc is not None
            return f"qemu exited (status {self.proc.returncode}): {tail(self.dir / 'qemu.log', 5)}"
        return None


# ---------------------------------------------------------------- a group of VMs


def group_netns(workdir: Path) -> str:
    return "sdnvm-" + hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]


def qemu_pids(workdir: Path, name: str = "") -> list[int]:
    """Live qemu processes of VMs under ``workdir`` (by the serial log path in their argv),
    or of the one called ``name``."""
    marker = f"file:{workdir.resolve()}/" + (f"vms/{name}/serial.log" if name else "")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith(QEMU) and any(a.startswith(marker) for a in args) \
                and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def cleanup(workdir: Path) -> None:
    """Whatever VMs under ``workdir`` left: qemu processes, their netns, their directories
    (serial logs, sockets, the snapshot overlays). Idempotent."""
    terminate(qemu_pids(workdir), timeout=10.0)
    subprocess.run(["ip", "netns", "del", group_netns(workdir)], capture_output=True, check=False)
    shutil.rmtree(workdir / "vms", ignore_errors=True)


class VmGroup:
    """N VMs on one private underlay (10.10.0.i/24), booted in parallel; a context manager."""

    def __init__(self, workdir: Path, names: Sequence[str], memory_mib: int = 512,
                 underlay: bool = True, boot_timeout: float = BOOT_TIMEOUT, kernel_args: str = "") -> None:
        self.workdir = workdir.resolve()
        self.names = list(names)
        self.memory_mib = memory_mib
        self.underlay = underlay
        self.boot_timeout = boot_timeout
        self.kernel_args = kernel_args  # appended to each VM's kernel command line
        self.vms: dict[str, Vm] = {}
        self.netns = group_netns(self.workdir)
        self.boot_seconds = 0.0

    def start(self, image: Path | None = None) -> VmGroup:
        image = image or ensure_image()
        cleanup(self.workdir)
        start = time.monotonic()
        try:
            subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up", "multicast", "on"],
                           check=True, capture_output=True)
            port = 20000 + int(self.netns[-4:], 16) % 20000
            for index, name in enumerate(self.names, start=1):
                self.vms[name] = self._boot(image, name, index, port)
            deadline = time.monotonic() + self.boot_timeout
            for vm in self.vms.values():
                vm.wait_booted(deadline)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - start
        return self

    def _boot(self, image: Path, name: str, index: int, port: int) -> Vm:
        vmdir = self.workdir / "vms" / name
        vmdir.mkdir(parents=True, exist_ok=True)
        ip = f"10.10.0.{index}" if self.underlay else None
        append = (f"root=/dev/vda rw console=ttyS0 quiet panic=-1 init=/sbin/sdn-netpol-init "
                  f"sdnvm.name={name}" + (f" sdnvm.ip={ip}/24" if ip else "") + f" {self.kernel_args}").strip()
        argv = [
            QEMU, "-name", name, "-accel", "tcg,tb-size=256", "-cpu", "max", "-smp", "1",
            "-m", str(self.memory_mib), "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(image / "vmlinux"), "-initrd", str(image / "initrd.img"), "-append", append,
            "-drive", f"file={image / 'base.img'},if=virtio,format=raw,snapshot=on",
            "-serial", f"file:{vmdir}/serial.log",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=ctl,path={vmdir}/ctl.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser.0,chardev=ctl,name=sdn-netpol.ctl",
            "-chardev", f"socket,id=ovs,path={vmdir}/relay.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser.0,chardev=ovs,name=sdn-netpol.ovs",
            "-virtfs", f"local,path={REPO},mount_tag=project,security_model=none,readonly=on",
        ]
        if ip:
            argv += ["-netdev", f"socket,id=u,mcast={MCAST_GROUP}:{port},localaddr=127.0.0.1",
                     "-device", f"virtio-net-pci,netdev=u,mac=52:54:00:5d:00:{index:02x},romfile="]
        env = dict(os.environ, TMPDIR=str(vmdir))  # the snapshot overlay lives (and dies) here
        with (vmdir / "qemu.log").open("wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "nice", "-n", "5", *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True)
        return Vm(name, vmdir, ip, proc)

    def stop(self) -> None:
        for vm in self.vms.values():
            if vm.agent is not None:
                vm.agent.close()
        cleanup(self.workdir)
        for vm in self.vms.values():
            if vm.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    vm.proc.wait(timeout=10)

    def attach(self) -> VmGroup:
        """The VMs of this group that an earlier process booted: connect to their agents."""
        for index, name in enumerate(self.names, start=1):
            vm = Vm(name, self.workdir / "vms" / name, f"10.10.0.{index}" if self.underlay else None, None)
            vm.attach()
            self.vms[name] = vm
        return self

    def __enter__(self) -> VmGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
