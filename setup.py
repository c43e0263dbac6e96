"""pip-installable package; console scripts `sdn-netpol` and `sdn-netpol-cni`."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIRES = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="sdn-netpol",
    version="0.1.0",
    description="Kubernetes NetworkPolicy for Open vSwitch: os-ken controller, CNI shim, lab",
    packages=find_packages(include=["sdn_netpol", "sdn_netpol.*"]),
    package_data={"sdn_netpol": ["py.typed", "data/*"]},
    python_requires=">=3.10",
    install_requires=REQUIRES,
    entry_points={
        "console_scripts": [
            "sdn-netpol=sdn_netpol.cli:main",
            "sdn-netpol-cni=sdn_netpol.cni.plugin:main",
        ]
    },
)
