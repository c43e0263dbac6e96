"""The seed page's example and the Kubernetes docs' default policies, as manifests shared by
the semantics tests (and usable by any test that wants the seed's cluster)."""

from __future__ import annotations

from typing import Any

from sdn_netpol.policy.state import ClusterState
from tests.builders import build, namespace, pod

TEST_NETWORK_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"""

SERVES = [("redis", 6379), (None, 5978)]
EXAMPLE_CLUSTER = [
    namespace("default"),
    namespace("myproject", project="myproject"),
    namespace("otherproject"),
    pod("default/db", "10.244.1.10", {"role": "db"}, SERVES),
    pod("default/db-replica", "10.244.2.10", {"role": "db"}, SERVES),
    pod("default/frontend", "10.244.1.11", {"role": "frontend"}, SERVES),
    pod("default/backend", "10.244.1.12", {"role": "backend"}, SERVES),
    pod("myproject/client", "10.244.2.20", {"app": "client"}, SERVES),
    pod("myproject/worker", "10.244.2.21", {}, SERVES),
    pod("otherproject/stranger", "10.244.3.30", {"role": "frontend"}, SERVES),
]
DB_PODS = ["default/db", "default/db-replica"]
ALL_PODS = [
    "default/backend", "default/db", "default/db-replica", "default/frontend",
    "myproject/client", "myproject/worker", "otherproject/stranger",
]



def example_state() -> ClusterState:
    return build(*EXAMPLE_CLUSTER, TEST_NETWORK_POLICY)


# The Kubernetes docs' files network-policy-*.yaml, as published (namespace "default").

DEFAULT_DENY_INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
"""
ALLOW_ALL_INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
"""
DEFAULT_DENY_EGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
"""
ALLOW_ALL_EGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
"""
DEFAULT_DENY_ALL = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
"""
NS_PAIR: list[dict[str, Any]] = [
    pod("default/a", "10.1.0.1", {"app": "a"}),
    pod("default/b", "10.1.0.2", {"app": "b"}),
    pod("default/no-labels", "10.1.0.3"),
    pod("other/c", "10.2.0.1", {"app": "c"}),
]
DEFAULT_PODS = ["default/a", "default/b", "default/no-labels"]


ALLOW_FROM = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-{app}, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]
    ports: [{{port: {port}}}]
"""



OUT_OF_SCOPE: list[dict[str, Any]] = [
    pod("default/host", "192.168.0.10", {"role": "db"}, host_network=True),
    pod("default/host-frontend", "192.168.0.11", {"role": "frontend"}, host_network=True),
    pod("default/no-ip", None, {"role": "db"}),
    pod("default/done", "10.244.1.50", {"role": "frontend"}, phase="Succeeded"),
    pod("default/pending", "10.244.1.51", {"role": "db"}, phase="Pending"),
]


