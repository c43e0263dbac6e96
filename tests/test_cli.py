"""`sdn-netpol validate | matrix | explain`: exit codes, messages, the matrix JSON contract of
DESIGN.md, a readable 30×30 table, plain-words explanations; help for every command, and
each command loading only its own group (sdn_netpol/cli/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from sdn_netpol.cli import main
from tests.builders import namespace, pod

SEED_DEMO = Path(__file__).resolve().parent.parent / "sdn_netpol" / "data" / "seed-demo.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "sdn-netpol"
BAD_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 172.17.0.0/16, except: [10.1.0.0/16]}
    ports: [{port: 80, endPort: 70}]
"""


def run(*args: str | Path, columns: int = 80) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(columns)})


def write(tmp_path: Path, name: str, *docs: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs) if not isinstance(docs[0], str) else str(docs[0]))
    return path


# --- help ------------------------------------------------------------------------------------


COMMANDS = [[], ["validate"], ["matrix"], ["explain"], ["compile"], ["flows-regen"], ["controller"], ["demo"],
            ["lab"], *(["lab", c] for c in ("up", "apply", "delete", "probe", "status", "verify", "down"))]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sdn-netpol")
def test_help_everywhere(command: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = run(*command, flag)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: ")


def test_every_command_is_listed_in_the_root_help() -> None:
    listed = run("--help").stdout.partition("Commands:")[2]
    for name in ("compile", "controller", "demo", "explain", "flows-regen", "lab", "matrix", "validate"):
        assert f"\n  {name} " in listed


def _loaded_after(code: str) -> list[str]:
    """sdn_netpol.lab and os-ken modules a fresh interpreter has imported after `code`."""
    probe = code + ("\nimport json, sys\n"
                    "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('sdn_netpol.lab', 'os_ken')))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_an_offline_command_imports_neither_the_lab_nor_os_ken() -> None:
    code = "from sdn_netpol.cli import main\ntry:\n    main(['validate', '--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_the_controller_runs_as_a_module_without_the_lab_or_os_ken() -> None:
    """How the lab and the tests start a controller: `python -m sdn_netpol.cli.controller`;
    its package must not import the module first (runpy would warn) nor pull in the lab."""
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "sdn_netpol.cli.controller",
                             "--help"], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert "--datapath-purge" in result.stdout
    assert _loaded_after("import sdn_netpol.cli.controller") == []


def test_help_documents_the_options() -> None:
    assert "--filename" in run("matrix", "--help").stdout and "[table|json]" in run("matrix", "--help").stdout
    text = run("explain", "--help").stdout
    assert "--from" in text and "NAMESPACE/POD or an IP address" in text and "--protocol" in text


# --- validate --------------------------------------------------------------------------------


def test_validate_accepts_good_manifests_and_counts_them() -> None:
    result = run("validate", "-f", SEED_DEMO)
    assert result.exit_code == 0
    assert result.stdout == "ok: 3 namespace(s), 5 pod(s), 1 network policy\n"


def test_validate_exits_1_listing_every_error(tmp_path: Path) -> None:
    bad_pod = pod("x/web", "10.0.0.999")
    path = write(tmp_path, "bad.yaml", yaml.safe_load(BAD_POLICY), bad_pod, namespace("ok"))
    result = run("validate", "-f", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: policy x/deny: spec.ingress[0].ports[0].endPort: 70: must be greater than or equal to `port` (80)",
        "error: policy x/deny: spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/16 is not within 172.17.0.0/16",
        "error: pod x/web: status.podIP: '10.0.0.999': must be a valid IP address",
    ]


def test_validate_reads_folders_and_several_paths_and_notes_skipped_kinds(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write(folder, "a.yaml", namespace("a"), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})
    (folder / "b.json").write_text(json.dumps(pod("a/p", "10.0.0.1")))
    result = run("validate", "-f", folder, "-f", SEED_DEMO)
    assert result.exit_code == 0
    assert result.stdout == "ok: 4 namespace(s), 6 pod(s), 1 network policy\n"
    assert re.fullmatch(r"note: .*a\.yaml document 2: kind 'Service' is not used by NetworkPolicy; skipped\n",
                        result.stderr)


def test_validate_missing_path_is_an_error(tmp_path: Path) -> None:
    result = run("validate", "-f", tmp_path / "absent.yaml")
    assert result.exit_code == 1
    assert "absent.yaml: no such file or directory" in result.stderr


def test_validate_requires_a_path() -> None:
    result = run("validate")
    assert result.exit_code == 2
    assert "Missing option '-f' / '--filename'" in result.stderr


# --- matrix ----------------------------------------------------------------------------------

SEED_PODS = ["default/backend", "default/db", "default/frontend", "myproject/client", "otherproject/stranger"]


def test_matrix_json_is_exactly_the_design_contract() -> None:
    result = run("matrix", "-f", SEED_DEMO, "--protocol", "TCP", "--port", "6379", "-o", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert list(data) == ["protocol", "port", "pods", "allowed"]
    assert data["protocol"] == "TCP" and data["port"] == 6379
    assert data["pods"] == SEED_PODS
    assert list(data["allowed"]) == SEED_PODS
    assert all(list(row) == SEED_PODS for row in data["allowed"].values())
    assert all(type(v) is bool for row in data["allowed"].values() for v in row.values())
    db_column = {src: data["allowed"][src]["default/db"] for src in SEED_PODS}
    assert db_column == {"default/backend": False, "default/db": True, "default/frontend": True,
                         "myproject/client": True, "otherproject/stranger": False}
    assert data["allowed"]["default/db"] == {"default/backend": False, "default/db": True,
                                             "default/frontend": False, "myproject/client": False,
                                             "otherproject/stranger": False}


def test_matrix_pods_are_sorted_as_namespace_slash_name_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", pod("a/x", "10.0.0.1"), pod("a-b/y", "10.0.0.2"), pod("a/w", "10.0.0.3"))
    data = json.loads(run("matrix", "-f", path, "--port", "80", "-o", "json").stdout)
    assert data["pods"] == ["a-b/y", "a/w", "a/x"] == sorted(data["pods"])
    assert list(data["allowed"]) == data["pods"] and list(data["allowed"]["a/w"]) == data["pods"]


def test_matrix_protocol_is_case_insensitive_and_changes_the_answer() -> None:
    data = json.loads(run("matrix", "-f", SEED_DEMO, "--protocol", "udp", "--port", "6379", "-o", "json").stdout)
    assert data["protocol"] == "UDP"
    assert data["allowed"]["default/frontend"]["default/db"] is False


def test_matrix_rejects_a_bad_port_and_protocol() -> None:
    assert run("matrix", "-f", SEED_DEMO, "--port", "0").exit_code == 2
    result = run("matrix", "-f", SEED_DEMO, "--port", "80", "--protocol", "ICMP")
    assert result.exit_code == 2 and "'ICMP' is not one of" in result.stderr


def test_matrix_refuses_invalid_manifests(tmp_path: Path) -> None:
    result = run("matrix", "-f", write(tmp_path, "bad.yaml", BAD_POLICY), "--port", "80", "-o", "json")
    assert result.exit_code == 1 and result.stdout == ""
    assert "error: policy x/deny:" in result.stderr


def thirty_pods(tmp_path: Path) -> tuple[Path, list[str]]:
    docs: list[object] = []
    refs = []
    for i in range(30):
        ref = f"team-{('alpha', 'bravo', 'charlie')[i % 3]}-production/service-backend-worker-{i:02d}"
        refs.append(ref)
        docs.append(pod(ref, f"10.1.0.{i + 1}", {"app": f"a{i % 4}"}))
    docs.append(yaml.safe_load(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: p, namespace: team-alpha-production}\n"
        "spec: {podSelector: {matchLabels: {app: a1}}, ingress: [{from: [{podSelector: {matchLabels: {app: a2}}}]}]}"))
    return write(tmp_path, "thirty.yaml", *docs), sorted(refs)


@pytest.mark.parametrize("columns", [80, 200])
def test_matrix_table_of_30_pods_keeps_every_row_on_one_line(tmp_path: Path, columns: int) -> None:
    path, refs = thirty_pods(tmp_path)
    result = run("matrix", "-f", path, "--port", "80", columns=columns)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "from \\ to" in line)
    assert header.split()[-30:] == [str(i) for i in range(1, 31)]
    for number, ref in enumerate(refs, start=1):
        [row] = [line for line in lines if ref in line]  # the full name, on exactly one line
        cells = row.split(ref)[1].split()
        assert row.split()[0] == str(number)
        assert len(cells) == 30 and set(cells) <= {"✓", "·"}, row
    json_result = json.loads(run("matrix", "-f", path, "--port", "80", "-o", "json").stdout)
    for number, ref in enumerate(refs):
        row = next(line for line in lines if ref in line)
        expected = ["✓" if json_result["allowed"][ref][dst] else "·" for dst in refs]
        assert row.split(ref)[1].split() == expected, number


# --- explain ---------------------------------------------------------------------------------


def test_explain_pod_to_pod_in_plain_words() -> None:
    result = run("explain", "-f", SEED_DEMO, "--from", "default/frontend", "--to", "default/db", "--port", "6379")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "ALLOWED: default/frontend -> default/db TCP/6379",
        "  egress: default/frontend is not isolated for egress (no policy selects it with policyType Egress): allowed",
        "  ingress: default/db is isolated for ingress by default/test-network-policy",
        "    allowed by policy default/test-network-policy ingress[0] (peer: pods [role=frontend]; port: TCP 6379)",
    ]


def test_explain_outside_address_denied_by_the_except() -> None:
    result = run("explain", "-f", SEED_DEMO, "--from", "172.17.1.5", "--to", "default/db", "--port", "6379")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "DENIED: 172.17.1.5 -> default/db TCP/6379",
        "  egress: 172.17.1.5 is not a pod: no egress policy applies",
        "  ingress: default/db is isolated for ingress by default/test-network-policy",
        "    no ingress rule of those policies allows this connection: denied",
    ]


def test_explain_pod_to_outside_address_with_protocol() -> None:
    result = run("explain", "-f", SEED_DEMO, "--from", "default/db", "--to", "10.0.0.7", "--port", "5978",
                 "--protocol", "UDP")
    assert result.stdout.splitlines()[:3] == [
        "DENIED: default/db -> 10.0.0.7 UDP/5978",
        "  egress: default/db is isolated for egress by default/test-network-policy",
        "    no egress rule of those policies allows this connection: denied",
    ]


def test_explain_an_address_of_a_pod_means_that_pod(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", pod("a/web", "10.0.0.1"), pod("a/client", "10.0.0.2"))
    result = run("explain", "-f", path, "--from", "10.0.0.2", "--to", "a/web", "--port", "80")
    assert result.exit_code == 0
    assert result.stderr == "note: 10.0.0.2 is the address of pod a/client\n"
    assert result.stdout.splitlines()[0] == "ALLOWED: a/client -> a/web TCP/80"


def test_explain_json() -> None:
    result = run("explain", "-f", SEED_DEMO, "--from", "default/backend", "--to", "default/db", "--port", "6379",
                 "-o", "json")
    data = json.loads(result.stdout)
    assert data["allowed"] is False
    assert data["ingress"]["isolated_by"] == ["default/test-network-policy"]
    assert data["ingress"]["allowed_by"] == [] and data["egress"]["isolated_by"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--from", "default/nobody", "--to", "default/db"], "no pod default/nobody in the manifests"),
     (["--from", "default/db", "--to", "banana"], "'banana' is neither NAMESPACE/POD nor an IP address")],
)
def test_explain_unknown_endpoint_is_a_usage_error(args: list[str], message: str) -> None:
    result = run("explain", "-f", SEED_DEMO, *args, "--port", "80")
    assert result.exit_code == 2
    assert message in result.stderr


# --- the installed console script ------------------------------------------------------------


def test_console_script_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([CONSOLE_SCRIPT, "validate", "-f", SEED_DEMO], capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, "ok: 3 namespace(s), 5 pod(s), 1 network policy\n")
    bad = subprocess.run([CONSOLE_SCRIPT, "validate", "-f", write(tmp_path, "bad.yaml", BAD_POLICY)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert bad.stderr.count("error: policy x/deny:") == 2
