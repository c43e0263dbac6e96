"""Pods from real container runtimes on a lab node: containerd's CRI and podman (CNI backend).

Everything a runtime needs lives under one private directory per runtime (its root, state,
sockets, config, CNI config and plugin directory); nothing global is configured
(docs/runtimes.md). The runtime execs `sdn-netpol-cni` the way it execs any CNI plugin;
what it finds under that name in its private plugin directory is a short shell wrapper
that enters the lab node's network namespace first (`ip netns exec NODE`, exactly how the lab
and tests/test_cni.py run the plugin), because the lab's OVS lives in that namespace: the
host end of the pod's veth must be created there, where a real node has it in the root
namespace. The wrapper also logs every invocation (command, container, netns, CNI_ARGS,
exit status, duration) so a test can count the runtime's ADDs and DELs; for podman, which
names the container in CNI_ARGS but sends no namespace, it adds K8S_POD_NAMESPACE.

A runtime pod joins the lab as a kubelet's pod joins a cluster: once the sandbox is up,
its manifest is published with `spec.nodeName` and `status.podIP` (`adopt`), and from then
on the lab's controllers, `apply`, `probe` and realization checks treat it like any other
pod. It has no server: a probe to it is answered by its kernel (RST, ICMP) when allowed
and by nothing when a policy drops it, which is what the probe counts.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdn_netpol.cni.netlink import host_ifname
from sdn_netpol.lab import netns, pods, procs
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import NodeState, PodState, locked
from sdn_netpol.lab.store import ObjectRef, Store
from sdn_netpol.ovs.instance import terminate

BASE = Path("/tmp/sdn-netpol-runtimes")  # short: unix socket paths must fit in 108 bytes
SHIM_DIR = Path("/run/containerd")  # containerd 1.6's shim sockets, whatever its state dir
CNI_CACHE = Path("/var/lib/cni/results")  # libcni's result cache: fixed in containerd 1.6 and podman 4.3
CNI_BIN = Path(pods.CNI_PATH)
PAUSE_NAME = "docker.io/sdnlab/pause:1"
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
BUSYBOX = Path("/bin/busybox")
NETWORK = "sdn-netpol"
CGROUP_FS = Path("/sys/fs/cgroup")
CGROUP_PARENT = "/sdn-netpol-runtimes"  # + /KIND-PID, as the private directory: removed afterwards
START_TIMEOUT = 60.0
APT_TIMEOUT = 1800.0


# ------------------------------------------------------------------ what the tests need


def ensure_packages(*names: str) -> None:
    """Install missing Debian packages (the test installs what it needs, never skips)."""
    missing = [n for n in names if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", n], capture_output=True, text=True, check=False,
    ).stdout != "install ok installed"]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "-q"]
    install = subprocess.run([*apt, "install", "-y", "--no-install-recommends", *missing], env=env,
                             capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    if install.returncode != 0:  # a fresh machine: the package lists first
        subprocess.run([*apt, "update"], env=env, capture_output=True, timeout=APT_TIMEOUT, check=True)
        subprocess.run([*apt, "install", "-y", "--no-install-recommends", *missing], env=env,
                       capture_output=True, timeout=APT_TIMEOUT, check=True)


def ensure_grpcio() -> None:
    """grpcio drives CRI (requirements-dev.txt); installed here if the venv lacks it."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "grpcio"], check=True, timeout=APT_TIMEOUT)


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env) if env else None,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return proc


# ------------------------------------------------------------------ the pause image


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = link
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def pause_layer() -> bytes:
    """The sandbox's root filesystem as an uncompressed tar: a static busybox (Debian's
    busybox-static) and the few directories a runtime mounts over. Deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run"):
            _add(tar, d, tarfile.DIRTYPE, 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in ("sh", "sleep"):
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        _add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/:/bin/sh\n")
        _add(tar, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest[7:]}", tarfile.REGTYPE, 0o644, data)
    return digest


def oci_archive(path: Path, name: str = PAUSE_NAME) -> Path:
    """An OCI image layout tarball (`ctr images import` reads it offline): one layer, a
    config whose entrypoint waits for SIGTERM (the pause container's whole job)."""
    layer = pause_layer()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": PAUSE_CMD, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "blobs", tarfile.DIRTYPE, 0o755)
        _add(tar, "blobs/sha256", tarfile.DIRTYPE, 0o755)
        layer_digest = _blob(tar, layer)
        config_digest = _blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": len(layer)}],
        }, sort_keys=True).encode()
        manifest_digest = _blob(tar, manifest)
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"},
        }]}).encode()
        _add(tar, "index.json", tarfile.REGTYPE, 0o644, index)
        _add(tar, "oci-layout", tarfile.REGTYPE, 0o644, b'{"imageLayoutVersion": "1.0.0"}')
    path.write_bytes(buf.getvalue())
    return path


# ------------------------------------------------------------------ CNI on a lab node


@dataclass
class CniDirs:
    """A runtime's private CNI configuration and plugin directories for one lab node."""

    root: Path
    node: NodeState
    namespace: str = ""  # added to CNI_ARGS as K8S_POD_NAMESPACE when the runtime sends none

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def conf_dir(self) -> Path:
        return self.root / "net.d"

    @property
    def log(self) -> Path:
        return self.root / "invocations.log"

    def write(self) -> None:
        """The plugin wrapper, host-local and loopback (linked from Debian's CNI plugins),
        and a conflist: the lab's own plugin config for this node (its OVSDB socket, its
        host-local range and dataDir), so runtime pods share the node's address pool."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for plugin in ("host-local", "loopback"):
            link = self.bin_dir / plugin
            link.unlink(missing_ok=True)
            link.symlink_to(CNI_BIN / plugin)
        inject = ""
        if self.namespace:
            inject = ('case ";$CNI_ARGS;" in *";K8S_POD_NAMESPACE="*) ;; *) '
                      f'CNI_ARGS="${{CNI_ARGS:+$CNI_ARGS;}}K8S_POD_NAMESPACE={self.namespace}"; '
                      "export CNI_ARGS ;; esac\n")
        log = shlex.quote(str(self.log))
        wrapper = self.bin_dir / "sdn-netpol-cni"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"# sdn-netpol-cni for lab node {self.node.name}: its OVS runs in netns {self.node.netns},\n"
            "# so the plugin runs there (as the lab runs it); every call is logged.\n"
            + inject
            + "start=$(date +%s%N)\n"
            f"ip netns exec {shlex.quote(self.node.netns)} {shlex.join(pods.plugin_command())}\n"
            "rc=$?\n"
            f'printf "%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n" "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" '
            f'"$CNI_ARGS" "$rc" "$(( $(date +%s%N) - start ))" >> {log}\n'
            "exit $rc\n")
        wrapper.chmod(0o755)
        conf = pods.cni_config(self.node, None)
        plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
        conflist = {"cniVersion": conf["cniVersion"], "name": NETWORK, "plugins": [plugin]}
        (self.conf_dir / f"10-{NETWORK}.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    def invocations(self) -> list[Invocation]:
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            command, cid, ns, args, rc, nanoseconds = line.split("\t")
            found.append(Invocation(command, cid, ns, args, int(rc), int(nanoseconds) / 1e9))
        return found


def plugin_timings(cni: CniDirs) -> dict[str, float]:
    """Seconds of each ADD and DEL the runtime ran, in order ("plugin DEL 2": the second)."""
    out: dict[str, float] = {}
    counts: dict[str, int] = {}
    for call in cni.invocations():
        if call.command in ("ADD", "DEL"):
            counts[call.command] = counts.get(call.command, 0) + 1
            out[f"plugin {call.command} {counts[call.command]}"] = call.seconds
    return out


@dataclass(frozen=True)
class Invocation:
    command: str
    container_id: str
    netns: str
    args: str
    rc: int
    seconds: float  # the plugin's run, as the wrapper timed it

    @property
    def args_map(self) -> dict[str, str]:
        return dict(p.split("=", 1) for p in self.args.split(";") if "=" in p)


# ------------------------------------------------------------------ a runtime pod in the lab


@dataclass
class RuntimePod:
    """A sandbox a runtime started, as the lab needs to know it."""

    namespace: str
    name: str
    node: str
    netns_path: str
    ip: str
    container_id: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_name(self) -> str:
        """Both runtimes mount the sandbox netns under /run/netns, where `ip netns` (and the
        lab, which enters pods by name) finds it."""
        path = Path(self.netns_path)
        assert path.parent.resolve() == netns.NETNS_DIR.resolve(), f"netns {path} not under {netns.NETNS_DIR}"
        return path.name

    def manifest(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": {"containers": [{"name": "pause", "image": PAUSE_NAME}]}}


def adopt(lab: Lab, pod: RuntimePod, folder: Path) -> None:
    """The kubelet's status report: the lab records the pod (node, IP, netns) and `apply`
    publishes its manifest with node and IP and waits until every node enforces it."""
    with locked(lab.workdir):
        state = lab.state()
        assert pod.key not in state.pods, f"{pod.key} is already a lab pod"
        state.pods[pod.key] = PodState(key=pod.key, node=pod.node, netns=pod.netns_name,
                                       container_id=pod.container_id, ip=pod.ip, mac="", ports=[],
                                       published=False)
        state.save()
    path = folder / f"runtime-pod-{pod.namespace}.{pod.name}.yaml"
    path.write_text(yaml.safe_dump(pod.manifest()))
    lab.apply([path])


def forget(lab: Lab, pod: RuntimePod) -> None:
    """The pod deleted from the API server after its sandbox is gone: manifest and lab
    record removed, then every node is waited for."""
    with locked(lab.workdir):
        state = lab.state()
        state.pods.pop(pod.key, None)
        Store(state.manifests).remove(ObjectRef("Pod", pod.namespace, pod.name))
        state.save()
    lab.wait_realized()


def ovs_interfaces(node: NodeState) -> dict[str, dict[str, str]]:
    """Interface name -> external_ids of every port on the node's br-int."""
    env = dict(os.environ, OVS_RUNDIR=node.rundir)
    ports = run(["ovs-vsctl", "list-ports", "br-int"], env=env).stdout.split()
    out = {}
    for port in ports:
        raw = run(["ovs-vsctl", "--format=json", "get", "Interface", port, "external_ids"], env=env).stdout
        out[port] = _ovs_map(raw.strip())
    return out


def _ovs_map(text: str) -> dict[str, str]:
    """`{a="b", c=d}` as ovs-vsctl prints a map column."""
    inner = text.strip()[1:-1]
    out = {}
    for part in filter(None, (p.strip() for p in _split_map(inner))):
        key, _, value = part.partition("=")
        out[key.strip().strip('"')] = value.strip().strip('"')
    return out


def _split_map(inner: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in inner:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def allocations(node: NodeState) -> dict[str, str]:
    """host-local's files for the node's network: address -> the container id holding it."""
    folder = Path(node.rundir) / "ipam" / pods.NETWORK
    if not folder.is_dir():
        return {}
    return {f.name: f.read_text().splitlines()[0].strip() for f in folder.iterdir()
            if f.name[0].isdigit() and f.is_file()}


def node_links(node: NodeState) -> list[str]:
    with netns.ipr_in(node.netns) as ipr:
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


def pod_link(netns_name: str, ifname: str = "eth0") -> dict[str, Any]:
    with netns.ipr_in(netns_name) as ipr:
        idx = netns.link_index(ipr, ifname)
        link = ipr.get_links(idx)[0]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)]
        routes = [(r.get_attr("RTA_DST") or "default", r.get_attr("RTA_GATEWAY"))
                  for r in ipr.get_routes(family=2, table=254)]
    return {"mtu": link.get_attr("IFLA_MTU"), "mac": link.get_attr("IFLA_ADDRESS"), "addresses": addrs,
            "routes": routes}


# ------------------------------------------------------------------ processes under a private root


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def cgroup_processes(parent: str) -> list[int]:
    """Every process in a cgroup under `parent` (the pids hierarchy sees them all)."""
    top = CGROUP_FS / "pids" / parent.strip("/")
    found: list[int] = []
    for procs_file in top.rglob("cgroup.procs") if top.is_dir() else []:
        with contextlib.suppress(OSError):
            found += [int(p) for p in procs_file.read_text().split()]
    return found


def remove_cgroups(parent: str) -> list[str]:
    """Kill what is left in the cgroups under `parent` (a crashed run's pause processes),
    then remove them in every hierarchy, deepest first; returns those still there."""
    left = cgroup_processes(parent)
    if left:
        terminate(left, timeout=10.0)
    remaining = []
    for hierarchy in sorted(CGROUP_FS.iterdir()) if CGROUP_FS.is_dir() else []:
        top = hierarchy / parent.strip("/")
        if not top.is_dir():
            continue
        for folder in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        for folder in (top, top.parent):  # the shared CGROUP_PARENT too, once empty
            if folder != hierarchy:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if top.exists():
            remaining.append(str(top))
    return remaining


def wipe(root: Path, cgroup_parent: str) -> None:
    """Remove a private runtime directory: its processes (argv carries the path, or they
    sit in its cgroups), the sandbox namespaces its plugin log names (a crashed run's),
    whatever is still mounted under it (overlays, shm), the files, its cgroups."""
    marked = procs.find_marked([str(root) + "/"])
    if marked:
        terminate(marked, timeout=10.0)
    remove_cgroups(cgroup_parent)
    log = root / "cni" / "invocations.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] != "ADD":
            continue
        path = Path(fields[2])
        if path.parent.resolve() == netns.NETNS_DIR.resolve() and path.exists():
            netns.remove(path.name)
        for cached in CNI_CACHE.glob(f"*-{fields[1]}-*"):  # libcni's copy of the ADD result
            cached.unlink(missing_ok=True)
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)
    remove_cgroups(cgroup_parent)


def private_root(kind: str) -> Path:
    """This process's directory for a runtime (`BASE/KIND-PID`; its cgroup parent is named
    alike), after wiping those of processes that are gone (a crashed or killed run):
    two test sessions never share, or wipe, each other's runtime."""
    names = {d.name for d in BASE.glob(f"{kind}-*")} if BASE.is_dir() else set()
    for hierarchy in CGROUP_FS.glob("*"):
        names |= {d.name for d in (hierarchy / CGROUP_PARENT.strip("/")).glob(f"{kind}-*")}
    for name in sorted(names):
        pid = name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not procs.alive(int(pid)):
            wipe(BASE / name, f"{CGROUP_PARENT}/{name}")
    root = BASE / f"{kind}-{os.getpid()}"
    wipe(root, f"{CGROUP_PARENT}/{root.name}")
    return root


# ------------------------------------------------------------------ containerd (CRI)


@dataclass
class Containerd:
    """A private containerd 1.6 whose CRI plugin uses `cni` (a CniDirs) for pod networks."""

    root: Path
    cni: CniDirs
    proc: subprocess.Popen[bytes] | None = None
    client: Any = None  # tests.cri.CriClient once started
    started_in: float = 0.0

    @property
    def cgroup_parent(self) -> str:
        return f"{CGROUP_PARENT}/{self.root.name}"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def write_config(self) -> None:
        r = self.root
        self.config.write_text(f"""\
version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_NAME}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = "{r}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.cni.bin_dir}"
    conf_dir = "{self.cni.conf_dir}"
    max_conf_num = 1
""")

    def ctr(self, *args: str, timeout: float = 120.0) -> str:
        return run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], timeout=timeout).stdout

    def start(self) -> None:
        from tests.cri import CriClient

        begin = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cni.write()
        self.write_config()
        self.proc = procs.spawn(None, ["containerd", "--config", str(self.config)], self.root / "containerd.log")
        self.client = CriClient(str(self.socket))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.client.version()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"containerd did not start: {self.log_tail()}") from None
                time.sleep(0.1)
        self.started_in = time.monotonic() - begin

    def import_pause(self) -> None:
        archive = oci_archive(self.root / "pause.tar")
        self.ctr("images", "import", str(archive))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "containerd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def remove_all(self) -> None:
        """StopPodSandbox + RemovePodSandbox of every sandbox (a crashed run's too)."""
        if self.client is None:
            return
        for sandbox in self.client.list_pod_sandbox_ids():
            with contextlib.suppress(Exception):
                self.client.stop_pod_sandbox(sandbox)
            with contextlib.suppress(Exception):
                self.client.remove_pod_sandbox(sandbox)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.remove_all()
        if self.client is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            terminate([self.proc.pid], timeout=10.0)
        procs.reap(self.proc)
        wipe(self.root, self.cgroup_parent)
        for folder in (SHIM_DIR / "s", SHIM_DIR):  # only if empty: no other containerd's shims
            with contextlib.suppress(OSError):
                folder.rmdir()

    def run_sandbox(self, namespace: str, name: str, labels: Mapping[str, str] | None = None) -> str:
        from tests.cri import sandbox_config

        logs = self.root / "pods" / f"{namespace}_{name}"
        logs.mkdir(parents=True, exist_ok=True)
        config = sandbox_config(name, namespace, str(uuid.uuid4()), str(logs), self.cgroup_parent, labels)
        return str(self.client.run_pod_sandbox(config))


@contextlib.contextmanager
def containerd(node: NodeState) -> Iterator[Containerd]:
    """A running private containerd with the pause image, its pods on `node`; afterwards
    every sandbox removed, the daemon stopped and `root` gone."""
    ensure_packages("containerd", "runc", "busybox-static", "containernetworking-plugins")
    ensure_grpcio()
    root = private_root("containerd")
    made = Containerd(root, CniDirs(root / "cni", node))
    try:
        made.start()
        made.import_pause()
        yield made
    finally:
        made.stop()


# ------------------------------------------------------------------ podman (CNI backend)


@dataclass
class Podman:
    """podman 4.3 with its CNI network backend, runc and file locks, all under `root`."""

    root: Path
    cni: CniDirs

    @property
    def cgroup_parent(self) -> str:
        return f"{CGROUP_PARENT}/{self.root.name}"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, TMPDIR=str(self.root / "tmp"), CONTAINERS_CONF=str(self.root / "containers.conf"),
                    CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"),
                    CONTAINERS_REGISTRIES_CONF=str(self.root / "registries.conf"))

    def write_config(self) -> None:
        r = self.root
        (r / "containers.conf").write_text(f"""\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{r}/events.log"
tmp_dir = "{r}/tmp"
lock_type = "file"
static_dir = "{r}/storage/libpod"
volume_path = "{r}/storage/volumes"
[network]
network_backend = "cni"
network_config_dir = "{self.cni.conf_dir}"
cni_plugin_dirs = ["{self.cni.bin_dir}"]
default_network = "{NETWORK}"
""")
        (r / "storage.conf").write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{r}/storage"
runroot = "{r}/run"
""")
        (r / "registries.conf").write_text("unqualified-search-registries = []\n")

    def podman(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"), *args]
        return run(argv, env=self.env, timeout=timeout, check=check)

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    def start(self) -> None:
        """Config files, and the pause root filesystem unpacked as a directory: containers
        run from it with `--rootfs`, so no image store is written (`podman import` would
        also write c/image's blob-info cache, which for root is /var/lib/containers/cache)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.cni.write()
        self.write_config()
        (self.root / "tmp").mkdir(exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(pause_layer())) as tar:
            tar.extractall(self.rootfs, filter="tar")

    def run_container(self, name: str) -> None:
        self.podman("run", "--detach", "--name", name, "--hostname", name, "--network", NETWORK,
                    "--cgroup-parent", self.cgroup_parent, "--rootfs", str(self.rootfs), *PAUSE_CMD)

    def inspect(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.podman("inspect", name).stdout)[0]
        return doc

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
        wipe(self.root, self.cgroup_parent)


@contextlib.contextmanager
def podman(node: NodeState, namespace: str) -> Iterator[Podman]:
    """A private podman whose containers join `node` as pods of `namespace` (podman names
    the container in K8S_POD_NAME only; the wrapper adds K8S_POD_NAMESPACE)."""
    ensure_packages("podman", "runc", "conmon", "busybox-static", "containernetworking-plugins")
    root = private_root("podman")
    made = Podman(root, CniDirs(root / "cni", node, namespace=namespace))
    try:
        made.start()
        yield made
    finally:
        made.stop()


# ------------------------------------------------------------------ checks both runtimes share


def assert_attached(node: NodeState, pod: RuntimePod, cni: CniDirs) -> Invocation:
    """The runtime's one ADD went through our plugin on `node`, and left what a lab pod
    has: the port on the node's br-int with the pod's identity, the host end in the node's
    namespace, the node's host-local address, eth0 as the plugin configures it."""
    adds = [i for i in cni.invocations() if i.command == "ADD" and i.container_id == pod.container_id]
    assert len(adds) == 1 and adds[0].rc == 0, cni.invocations()
    add = adds[0]
    assert add.netns == pod.netns_path
    ports = {name: ids for name, ids in ovs_interfaces(node).items() if ids.get("container-id") == pod.container_id}
    assert len(ports) == 1, f"{pod.container_id[:12]}: ports {ports}"
    host, ids = next(iter(ports.items()))
    assert ids == {"container-id": pod.container_id, "pod-namespace": pod.namespace, "pod-name": pod.name,
                   "iface-id": pod.key, "pod-ip": pod.ip, "pod-mac": ids["pod-mac"]}, ids
    assert host in node_links(node), f"host end {host} is not in {node.netns}"
    with netns.ipr_in(None) as ipr:
        assert not ipr.link_lookup(ifname=host), f"host end {host} leaked into the root namespace"
    assert allocations(node).get(pod.ip) == pod.container_id
    eth0 = pod_link(pod.netns_name)
    assert eth0["mtu"] == pods.POD_MTU
    assert eth0["mac"] == ids["pod-mac"]
    assert f"{pod.ip}/24" in eth0["addresses"]
    assert ("default", node.gateway) in eth0["routes"]
    return add


def assert_detached(node: NodeState, pod: RuntimePod) -> None:
    """Nothing of the pod left on the node: port, host end, address."""
    host = next((name for name, ids in ovs_interfaces(node).items()
                 if ids.get("container-id") == pod.container_id), None)
    assert host is None, f"port {host} of {pod.key} is still on br-int"
    assert pod.ip not in allocations(node), f"{pod.ip} is still allocated"
    veth = host_ifname(pod.container_id, "eth0")
    assert veth not in node_links(node), f"host end {veth} of {pod.key} is still in {node.netns}"
