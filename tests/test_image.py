"""The image (image/Containerfile, scripts/build-image.sh) under podman with runc: the
console scripts of this checkout and the OVS tools run inside it.

The script builds the image when it is missing or older than the checkout's sources
(cold ~2 min, after a source change ~40 s) and otherwise only checks the inputs' hash
(~1 s); docs/image.md. podman uses the script's private store, never the global one."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdn_netpol.cli import main
from sdn_netpol.cni.config import SPEC_VERSION, SUPPORTED_VERSIONS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build-image.sh"
IMAGE = "localhost/sdn-netpol:latest"
SIZE_BUDGET = 450_000_000  # bytes; 372 MB measured on 2026-12-03 (docs/image.md)


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    """The environment that points podman at the image's private store, once the image
    is current (built by the script if it is not)."""
    build = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    assert build.returncode == 0, f"scripts/build-image.sh failed:\n{build.stdout}\n{build.stderr[-4000:]}"
    exports = subprocess.run(["bash", str(SCRIPT), "--podman-env"], capture_output=True, text=True, check=True)
    env = dict(os.environ)
    for line in exports.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def podman(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def run_in_image(env: dict[str, str], *command: str, **container_env: str) -> subprocess.CompletedProcess[str]:
    """`podman run` with runc, no network, stdin open and empty (as a CNI runtime gives it)."""
    flags = [f"--env={k}={v}" for k, v in container_env.items()]
    return subprocess.run(
        ["podman", "run", "--rm", "-i", "--runtime=runc", "--network=none", *flags, IMAGE, *command],
        env=env, input="", capture_output=True, text=True, timeout=120, check=False,
    )


def command_names(help_text: str) -> list[str]:
    commands = help_text.split("Commands:", 1)[1]
    return re.findall(r"^  (\S+)", commands, flags=re.MULTILINE)


def test_sdn_netpol_help_in_image(podman_env: dict[str, str]) -> None:
    proc = run_in_image(podman_env, "sdn-netpol", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: sdn-netpol [OPTIONS] COMMAND [ARGS]...")
    # The image's commands are this checkout's.
    here = CliRunner().invoke(main, ["--help"])
    assert command_names(proc.stdout) == command_names(here.output)
    assert "controller" in command_names(proc.stdout)


def test_cni_plugin_version_in_image(podman_env: dict[str, str]) -> None:
    proc = run_in_image(podman_env, "sdn-netpol-cni", CNI_COMMAND="VERSION")
    assert proc.returncode == 0, proc.stderr
    version = json.loads(proc.stdout)
    assert version["cniVersion"] == "1.0.0"
    assert "1.0.0" in version["supportedVersions"]
    assert version == {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_ovs_tools_and_host_local_in_image(podman_env: dict[str, str]) -> None:
    proc = run_in_image(podman_env, "sh", "-ec", "ovs-vsctl --version; ovs-ofctl --version; ovs-appctl --version")
    assert proc.returncode == 0, proc.stderr
    for tool in ("ovs-vsctl", "ovs-ofctl", "ovs-appctl"):
        assert re.search(rf"^{tool} \(Open vSwitch\) \d+\.\d+", proc.stdout, flags=re.MULTILINE), proc.stdout
    # host-local ships in the image for the DaemonSet to install onto the node.
    ipam = run_in_image(podman_env, "/usr/lib/cni/host-local", CNI_COMMAND="VERSION")
    assert ipam.returncode == 0, ipam.stderr
    assert "1.0.0" in json.loads(ipam.stdout)["supportedVersions"]


OVS_IN_IMAGE = """
d=/tmp/ovs; mkdir -p $d; export OVS_RUNDIR=$d OVS_LOGDIR=$d OVS_DBDIR=$d
ovsdb-tool create $d/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server $d/conf.db --remote=punix:$d/db.sock --pidfile --detach --log-file -vconsole:off
ovs-vswitchd unix:$d/db.sock --pidfile --detach --log-file -vconsole:off
ovs-vsctl --db=unix:$d/db.sock --timeout=10 add-br br0 -- set bridge br0 datapath_type=netdev fail_mode=secure \
  || { tail -n 5 $d/ovs-vswitchd.log; exit 1; }
ovs-ofctl add-flow br0 priority=10,ip,actions=drop
ovs-ofctl dump-flows br0 --no-stats
ovs-vsctl --db=unix:$d/db.sock get bridge br0 fail_mode
"""


def test_ovs_runs_in_image(podman_env: dict[str, str]) -> None:
    """The "OVS in the pod" option: ovsdb-server and ovs-vswitchd (userspace datapath; the
    bridge's port is a tap, hence NET_ADMIN and /dev/net/tun) run from the image."""
    proc = subprocess.run(
        ["podman", "run", "--rm", "-i", "--runtime=runc", "--network=none", "--cap-add=NET_ADMIN",
         "--device=/dev/net/tun", IMAGE, "sh", "-ec", OVS_IN_IMAGE],
        env=podman_env, input="", capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [" priority=10,ip actions=drop", "secure"]


def test_image_labels_and_size(podman_env: dict[str, str]) -> None:
    proc = podman(podman_env, "image", "inspect", IMAGE)
    assert proc.returncode == 0, proc.stderr
    (image,) = json.loads(proc.stdout)
    setup_py = (REPO / "setup.py").read_text()
    version = re.search(r'version="([^"]+)"', setup_py)
    assert version
    labels = image["Labels"]
    assert labels["org.opencontainers.image.version"] == version.group(1)
    assert re.fullmatch(r"[0-9a-f]{16}", labels["io.sdn-netpol.inputs"])
    assert image["Size"] < SIZE_BUDGET, f"image is {image['Size'] / 1e6:.0f} MB, budget {SIZE_BUDGET / 1e6:.0f} MB"


def test_install_cni_from_the_image_gives_the_host_a_plugin_its_own_python_runs(
        podman_env: dict[str, str], tmp_path: Path) -> None:
    """What the DaemonSet's install-cni init container does: the plugin it writes through
    the hostPath runs on the host's python3, not the image's venv."""
    proc = subprocess.run(
        ["podman", "run", "--rm", "--runtime=runc", "--network=none", "--read-only", f"--volume={tmp_path}:/host",
         IMAGE, "sdn-netpol", "node", "install-cni", "--pod-cidr=10.244.9.0/24", "--no-check-bridge",
         "--cni-bin-dir=/host/opt/cni/bin", "--cni-conf-dir=/host/etc/cni/net.d"],
        env=podman_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    plugin = tmp_path / "opt/cni/bin/sdn-netpol-cni"
    conflist = json.loads((tmp_path / "etc/cni/net.d/10-sdn-netpol.conflist").read_text())
    assert conflist["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": "10.244.9.0/24", "rangeEnd": "10.244.9.253", "gateway": "10.244.9.254"}]]
    host_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
    version = subprocess.run(["/usr/bin/python3", str(plugin)], env=host_env, input="", capture_output=True,
                             text=True, timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["cniVersion"] == SPEC_VERSION
