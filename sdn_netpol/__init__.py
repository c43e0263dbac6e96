"""sdn-netpol: Kubernetes NetworkPolicy on Open vSwitch."""
__version__ = "0.1.0"
