"""The Vagrant testbed, checked offline: no hypervisor here runs stock VMs at speed
(vagrant/README.md), so what can be checked without booting is: the Vagrantfile parses and
validates, every provisioning script passes shellcheck, and the provisioning applies
deploy/ rather than a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAGRANT = ROOT / "vagrant"
SCRIPTS = sorted((VAGRANT / "provision").glob("*.sh"))


def validate(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_HOME": str(folder / ".vagrant.d")}
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_vagrantfile_validates(tmp_path: Path) -> None:
    shutil.copytree(VAGRANT, tmp_path / "vagrant", ignore=shutil.ignore_patterns(".vagrant", ".image.tar*"))
    out = validate(tmp_path / "vagrant")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def test_a_broken_vagrantfile_is_refused(tmp_path: Path) -> None:
    """validate really checks: an unknown setting fails it."""
    shutil.copytree(VAGRANT, tmp_path / "vagrant", ignore=shutil.ignore_patterns(".vagrant", ".image.tar*"))
    vagrantfile = tmp_path / "vagrant" / "Vagrantfile"
    vagrantfile.write_text(vagrantfile.read_text().replace("node.vm.hostname", "node.vm.hostnaem"))
    out = validate(tmp_path / "vagrant")
    assert out.returncode != 0
    assert "hostnaem" in out.stdout + out.stderr


def test_every_provisioning_script_passes_shellcheck() -> None:
    referenced = {line.split('path: "')[1].split('"')[0].split("#{")[0]
                  for line in (VAGRANT / "Vagrantfile").read_text().splitlines() if 'path: "provision/' in line}
    assert referenced <= {f"provision/{p.name}" for p in SCRIPTS} | {"provision/"}
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout


def test_the_testbed_installs_sdn_netpol_from_deploy() -> None:
    control_plane = (VAGRANT / "provision" / "control-plane.sh").read_text()
    assert "kubectl apply -k /sdn-netpol/deploy" in control_plane
    assert not (VAGRANT / "manifests").exists(), "RBAC lives in deploy/ only"


def test_every_shell_script_of_the_project_passes_shellcheck() -> None:
    scripts = [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / ".ci" / "run"]
    assert len(scripts) >= 4
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, scripts)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout
