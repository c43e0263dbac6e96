"""A real kube-apiserver (v1.20.2, built by scripts/kube-apiserver.sh) and etcd for the tests.

`running_apiserver(folder)` starts etcd and the cached apiserver on 127.0.0.1 with free
ports, everything under `folder` (etcd's data in /dev/shm when it exists: no fsync cost):

- certificates made here (ECDSA P-256, with `cryptography`): a CA, the serving certificate,
  and an admin client certificate in `system:masters`;
- a static token file mapping a token to the deploy/ ServiceAccount's user name and groups
  (and to any other ServiceAccount asked for), so that RBAC (`--authorization-mode=RBAC`)
  judges the controller exactly as it would judge its ServiceAccount token in a cluster
  (there is no token controller to mint real ones, so ServiceAccount admission is off);
- `admin.kubeconfig` and `serviceaccount.kubeconfig` for the official client.

No kubelet, scheduler or controller-manager: a Pod is bound by `spec.nodeName` at creation
and its status written through the status subresource; a deleted Namespace stays Terminating.
Watches of Pods and NetworkPolicies are served straight from etcd (`--watch-cache-sizes`
0), so an etcd compaction expires them (410 Gone) as it would an uncached resource; Namespaces
and Nodes go through the apiserver's watch cache (bookmarks, resumption from the cache).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "kube-apiserver.sh"
VERSION = "v1.20.2"
CACHE = Path(os.environ.get("SDN_NETPOL_CACHE", "/var/cache/sdn-netpol"))
BINARY = CACHE / f"kube-apiserver-{VERSION}" / "kube-apiserver"
ETCD = Path("/usr/bin/etcd")

SA = "sdn-netpol/sdn-netpol"  # deploy/rbac.yaml's ServiceAccount, namespace/name
SA_USER = "system:serviceaccount:sdn-netpol:sdn-netpol"
UNCACHED = ("pods", "networkpolicies.networking.k8s.io")  # watched straight from etcd

# kind → (plural, namespaced): what `path_of` needs to address an object of a manifest
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "Node": ("nodes", False),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Secret": ("secrets", True),
    "ConfigMap": ("configmaps", True),
    "ServiceAccount": ("serviceaccounts", True),
    "NetworkPolicy": ("networkpolicies", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "AdminNetworkPolicy": ("adminnetworkpolicies", False),
    "BaselineAdminNetworkPolicy": ("baselineadminnetworkpolicies", False),
    "ClusterNetworkPolicy": ("clusternetworkpolicies", False),
}
API_VERSIONS = {"Namespace": "v1", "Node": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1"}


class ApiError(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{method} {path}: {status} {body.get('reason')}: {body.get('message')}")
        self.status, self.body = status, body


def ensure_binary() -> Path:
    """The cached kube-apiserver; built by scripts/kube-apiserver.sh when missing (a no-op
    when cached; minutes when not: the first run on a machine pays for the build)."""
    if not (os.access(BINARY, os.X_OK) and ETCD.exists()):
        subprocess.run([str(BUILD_SCRIPT), "build"], check=True)
    return BINARY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_path(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def path_of(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    """The REST path of a collection (no name) or an object; namespace None: all namespaces."""
    plural, namespaced = KINDS[kind]
    path = base_path(api_version)
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def manifest_path(doc: Mapping[str, Any], with_name: bool = True) -> str:
    meta = doc["metadata"]
    return path_of(doc["apiVersion"], doc["kind"], meta.get("namespace"), meta["name"] if with_name else None)


# ---- a small JSON REST client (the tests' own, independent of the code under test) -----


@dataclass
class Rest:
    """JSON requests to the apiserver as one identity (a client certificate or a token)."""

    url: str
    ca: Path
    cert: tuple[Path, Path] | None = None
    token: str | None = None
    pool: urllib3.PoolManager = field(init=False)

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(self.ca), "retries": False,
                              "timeout": urllib3.Timeout(connect=5, read=30)}
        if self.cert is not None:
            kw |= {"cert_file": str(self.cert[0]), "key_file": str(self.cert[1])}
        self.pool = urllib3.PoolManager(**kw)

    def headers(self, content_type: str = "application/json") -> dict[str, str]:
        h = {"Accept": "application/json", "Content-Type": content_type}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
             content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        """(status, decoded body) whatever the status."""
        resp = self.pool.request(method, self.url + path + _query(query),
                                 body=None if body is None else json.dumps(body).encode(),
                                 headers=self.headers(content_type))
        data = resp.data
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        return resp.status, decoded

    def ok(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
           content_type: str = "application/json") -> dict[str, Any]:
        status, decoded = self.call(method, path, body, query, content_type)
        if not 200 <= status <= 299:
            raise ApiError(method, path, status, decoded)
        return decoded

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.ok("GET", path, query=query)

    def watch_status(self, path: str, **query: Any) -> int:
        """Open a watch and return its HTTP status without reading events (no waiting)."""
        resp = self.pool.request("GET", self.url + path + _query({**query, "watch": "1", "timeoutSeconds": "5"}),
                                 headers=self.headers(), preload_content=False)
        try:
            return int(resp.status)
        finally:
            resp.close()  # the connection too: its unread event stream must not be reused
            resp.release_conn()


def _query(query: Mapping[str, Any] | None) -> str:
    if not query:
        return ""
    return "?" + urlencode({k: v for k, v in query.items() if v is not None})


# ---- certificates -------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
                 client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
            content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH]
                                                                          if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_pki(pki: Path) -> None:
    """ca.crt; apiserver.crt/key (127.0.0.1); admin.crt/key (system:masters); sa.key/sa.pub."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = _key(), _name("sdn-netpol-test-ca")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, subject, kw in (("apiserver", _name("kube-apiserver"), {"server": True}),
                              ("admin", _name("sdn-netpol-test-admin", "system:masters"), {"client": True})):
        key = _key()
        cert = _certificate(subject, key, ca_name, ca_key, **kw)
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pki / f"{name}.key")
    sa_key = _key()  # signs ServiceAccount tokens (required flags; no token is minted here)
    _write_key(sa_key, pki / "sa.key")
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, url: str, ca: Path, user: dict[str, str]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }))
    path.chmod(0o600)
    return path


# ---- processes ----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (no stray apiserver after a crash)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class KubeAPI:
    """A running etcd + kube-apiserver; what the tests use to talk to them."""

    folder: Path
    url: str
    etcd_url: str
    ca: Path
    admin: Rest
    serviceaccount: Rest
    admin_kubeconfig: Path
    serviceaccount_kubeconfig: Path
    apiserver: subprocess.Popen[bytes]
    etcd: subprocess.Popen[bytes]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: pki, etcd healthy, apiserver ready
    tokens: dict[str, str] = field(default_factory=dict)  # ServiceAccount namespace/name → its token

    def kubeconfig(self, serviceaccount: str, path: Path, port: int | None = None) -> Path:
        """A kubeconfig with a ServiceAccount's token; `port`: another local port (a relay)."""
        url = self.url if port is None else f"https://127.0.0.1:{port}"
        return write_kubeconfig(path, url, self.ca, {"token": self.tokens[serviceaccount]})

    def etcd_call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """etcd's v3 JSON gateway (keys base64)."""
        resp = urllib3.request("POST", f"{self.etcd_url}/v3/{endpoint}", body=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"}, timeout=10, retries=False)
        if resp.status != 200:
            raise AssertionError(f"etcd {endpoint}: {resp.status} {resp.data[:300]!r}")
        result: dict[str, Any] = json.loads(resp.data)
        return result

    def etcd_revision(self) -> int:
        reply = self.etcd_call("kv/range", {"key": base64.b64encode(b"/registry/").decode(), "limit": 1})
        return int(reply["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd's history up to its current revision (physically); return it."""
        revision = self.etcd_revision()
        self.etcd_call("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def rss_mib(self) -> float:
        """The apiserver's resident memory."""
        for line in Path(f"/proc/{self.apiserver.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError, urllib3.exceptions.HTTPError, AssertionError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout} s:\n{_tail(log)}")
        time.sleep(0.1)


def serviceaccount_user(serviceaccount: str) -> tuple[str, tuple[str, ...]]:
    """The user name and groups a ServiceAccount's token authenticates as."""
    namespace, name = serviceaccount.split("/")
    return (f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


@contextlib.contextmanager
def running_apiserver(folder: Path, binary: Path | None = None,
                      serviceaccounts: tuple[str, ...] = (SA,)) -> Iterator[KubeAPI]:
    """`serviceaccounts` (namespace/name) get a token each; the first is `.serviceaccount`."""
    binary = binary or ensure_binary()
    folder.mkdir(parents=True, exist_ok=True)
    pki = folder / "pki"
    t0 = time.monotonic()
    make_pki(pki)
    tokens = {sa: secrets.token_hex(16) for sa in serviceaccounts}
    # token,user,uid,"group,group": each ServiceAccount's identity as its token would give it
    (pki / "tokens.csv").write_text("".join(
        f'{token},{user},uid-{i},"{",".join(groups)}"\n'
        for i, (sa, token) in enumerate(tokens.items()) for user, groups in [serviceaccount_user(sa)]))
    token = tokens[serviceaccounts[0]]
    shm = Path("/dev/shm")
    data = Path(tempfile.mkdtemp(prefix="sdn-netpol-etcd-", dir=shm if shm.is_dir() else folder))
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url, url = f"http://127.0.0.1:{etcd_port}", f"https://127.0.0.1:{api_port}"
    etcd_log, api_log = folder / "etcd.log", folder / "kube-apiserver.log"
    etcd = apiserver = None
    timings: dict[str, float] = {"pki": time.monotonic() - t0}
    try:
        etcd = _spawn([str(ETCD), "--name", "test", "--data-dir", str(data), "--logger", "zap", "--log-level", "warn",
                       "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                       "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                       "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                       "--initial-cluster", f"test=http://127.0.0.1:{peer_port}"], etcd_log)
        t1 = time.monotonic()
        _wait(lambda: urllib3.request("GET", f"{etcd_url}/health", timeout=1, retries=False).status == 200,
              30, "etcd", etcd, etcd_log)
        timings["etcd"] = time.monotonic() - t1
        apiserver = _spawn([
            str(binary),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            "--insecure-port=0",  # 1.20 would otherwise serve an unauthenticated port
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",  # no kubernetes Endpoints to keep for a server nobody reaches
            "--disable-admission-plugins=ServiceAccount",  # no token controller: pods get no token volume
            f"--watch-cache-sizes={','.join(f'{r}#0' for r in UNCACHED)}",
            "--profiling=false",
        ], api_log)
        t2 = time.monotonic()
        admin = Rest(url, pki / "ca.crt", cert=(pki / "admin.crt", pki / "admin.key"))
        _wait(lambda: admin.call("GET", "/readyz")[0] == 200, 120, "kube-apiserver", apiserver, api_log)
        timings["apiserver"] = time.monotonic() - t2
        api = KubeAPI(
            folder=folder, url=url, etcd_url=etcd_url, ca=pki / "ca.crt", admin=admin,
            serviceaccount=Rest(url, pki / "ca.crt", token=token),
            admin_kubeconfig=write_kubeconfig(folder / "admin.kubeconfig", url, pki / "ca.crt", {
                "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}),
            serviceaccount_kubeconfig=write_kubeconfig(folder / "serviceaccount.kubeconfig", url, pki / "ca.crt",
                                                       {"token": token}),
            apiserver=apiserver, etcd=etcd, timings=timings, tokens=tokens)
        yield api
    finally:
        _stop(apiserver)
        _stop(etcd)
        shutil.rmtree(data, ignore_errors=True)


# ---- applying manifests -------------------------------------------------------------------


def apply(rest: Rest, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Create, or replace what the manifest gives (labels, annotations and every top-level
    field but status) keeping what the server set. A Pod's spec is immutable but for a few
    fields: an existing Pod gets its labels only. A manifest's Pod status is then written
    through the status subresource (there is no kubelet to do it)."""
    status, created = rest.call("POST", manifest_path(doc, with_name=False), _without_status(doc))
    if status == 409:
        current = rest.get(manifest_path(doc))
        meta = current["metadata"]
        meta["labels"] = dict(doc["metadata"].get("labels") or {})
        if "annotations" in doc["metadata"]:
            meta["annotations"] = dict(doc["metadata"]["annotations"] or {})
        for key, value in doc.items():
            if key not in ("apiVersion", "kind", "metadata", "status") and not (doc["kind"] == "Pod" and key == "spec"):
                current[key] = value
        created = rest.ok("PUT", manifest_path(doc), current)
    elif not 200 <= status <= 299:
        raise ApiError("POST", manifest_path(doc, with_name=False), status, created)
    if doc["kind"] == "Pod" and doc.get("status"):
        created = rest.ok("PATCH", manifest_path(doc) + "/status", {"status": doc["status"]},
                          content_type="application/merge-patch+json")
    return created


def _without_status(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not (k == "status" and doc["kind"] == "Pod")}


def delete(rest: Rest, api_version: str, kind: str, namespace: str | None, name: str) -> None:
    """Delete now (grace period 0: no kubelet would ever confirm a Pod's graceful end)."""
    rest.ok("DELETE", path_of(api_version, kind, namespace, name), {"gracePeriodSeconds": 0})


def load_manifests(*paths: Path) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


DEPLOY = ROOT / "deploy"
CRD_FILES = ("adminnetworkpolicies.yaml", "baselineadminnetworkpolicies.yaml", "clusternetworkpolicies.yaml")


def install_deploy(api: KubeAPI) -> None:
    """What an operator applies before the DaemonSet: deploy/'s Namespace, RBAC and CRDs
    (as the admin), the CRDs Established."""
    crds = load_manifests(*(DEPLOY / "crds" / f for f in CRD_FILES))
    for doc in [*load_manifests(DEPLOY / "namespace.yaml", DEPLOY / "rbac.yaml"), *crds]:
        apply(api.admin, doc)
    for crd in crds:
        wait_established(api.admin, crd["metadata"]["name"])


def wait_established(rest: Rest, crd_name: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        crd = rest.get(path_of("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, crd_name))
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            return crd
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD {crd_name} not Established: {conditions}")
        time.sleep(0.1)
