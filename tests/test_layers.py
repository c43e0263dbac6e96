"""The house's layering, checked on the source (DESIGN.md, README "Layout").

Imports point down only:

    cli/                                   the `sdn-netpol` command
    I/O packages (controller/, cni/, lab/, ovs/, inputs/, and any other package)
    compiler/ → policy/ → model/           pure

and no module imports itself through others (an import circle means two modules that cannot
be understood, tested or loaded one without the other). Every import counts wherever it is
written: at the top, inside a function (a lazy import is still a dependency) or under
`if TYPE_CHECKING:`. A package's implicit import of its parent `__init__` does not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "sdn_netpol"
SOURCE = Path(__file__).resolve().parent.parent / PACKAGE
PURE = ("model", "policy", "compiler")  # bottom to top
# Which layers each layer may import (a layer may always import itself).
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "model": frozenset({"model"}),
    "policy": frozenset({"model", "policy"}),
    "compiler": frozenset({"model", "policy", "compiler"}),
    "I/O": frozenset({"model", "policy", "compiler", "I/O"}),
    "cli": frozenset({"model", "policy", "compiler", "I/O", "cli"}),
}

Edge = tuple[str, str, int]  # importer, imported, line


def module_names(root: Path = SOURCE) -> dict[str, Path]:
    """Every module of the package: `sdn_netpol.cli` for sdn_netpol/cli/__init__.py."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> str:
    """model, policy, compiler, cli, or I/O (every other package: controller, lab, …)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "model"  # sdn_netpol/__init__.py: the bottom, it may import nothing of ours
    return parts[1] if parts[1] in (*PURE, "cli") else "I/O"


def imports(module: str, source: str, modules: Iterable[str], is_package: bool = False) -> list[Edge]:
    """The package's modules that `source` (the text of `module`; an `__init__.py` if
    `is_package`) imports, anywhere in it."""
    known = set(modules)
    found: list[Edge] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.module, node.level)
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            owner = _longest_known(target, known)
            if owner is not None and owner != module:
                found.append((module, owner, node.lineno))
    return found


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _longest_known(name: str, known: set[str]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph(root: Path = SOURCE) -> list[Edge]:
    modules = module_names(root)
    return [edge for name, path in modules.items()
            for edge in imports(name, path.read_text(), modules, path.name == "__init__.py")]


def upward(edges: Iterable[Edge]) -> list[str]:
    return [f"{a} ({layer(a)}) imports {b} ({layer(b)}) at line {line}"
            for a, b, line in edges if layer(b) not in MAY_IMPORT[layer(a)]]


def circles(edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


EDGES = import_graph()


def _upward_from(importer_layer: str) -> list[str]:
    return upward(edge for edge in EDGES if layer(edge[0]) == importer_layer)


def test_model_imports_nothing_of_policy_compiler_io_or_cli() -> None:
    assert _upward_from("model") == []


def test_policy_imports_only_model() -> None:
    assert _upward_from("policy") == []


def test_compiler_imports_only_policy_and_model() -> None:
    assert _upward_from("compiler") == []


def test_io_packages_never_import_the_cli() -> None:
    assert _upward_from("I/O") == []


def test_every_module_is_checked() -> None:
    """The walk found the package, each layer of it, and the imports between them."""
    assert {layer(name) for name in module_names()} == set(MAY_IMPORT)
    assert ("sdn_netpol.policy.resolve", "sdn_netpol.policy.state") in {(a, b) for a, b, _ in EDGES}


def test_no_module_imports_itself_through_others() -> None:
    assert circles(EDGES) == []


def test_every_command_module_lives_in_the_cli_package() -> None:
    """The old loose command modules are gone, with no shims left behind."""
    names = module_names()
    stale = ["sdn_netpol.cli_render", "sdn_netpol.compiler_cli", "sdn_netpol.golden_flows", "sdn_netpol.manifests",
             "sdn_netpol.node_inputs", "sdn_netpol.controller.cli", "sdn_netpol.lab.cli"]
    assert [name for name in stale if name in names] == []
    assert {"sdn_netpol.cli", "sdn_netpol.cli.offline", "sdn_netpol.cli.flows", "sdn_netpol.cli.render",
            "sdn_netpol.cli.lab", "sdn_netpol.cli.controller"} <= names.keys()


# ---- the checker itself -------------------------------------------------------------------

FAKE = {
    "sdn_netpol.model.a": "from sdn_netpol.policy import b\n",
    "sdn_netpol.policy.b": "def f():\n    from sdn_netpol.compiler.c import x\n",
    "sdn_netpol.compiler.c": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sdn_netpol.model import a\n"
        "from . import d\nfrom .d import y\nimport sdn_netpol.lab.e\n"
    ),
    "sdn_netpol.compiler.d": "import json\nfrom netaddr import IPSet\n",
    "sdn_netpol.lab.e": "from sdn_netpol.cli.f import g\n",
    "sdn_netpol.cli.f": "from sdn_netpol.lab.e import z\n",
    "sdn_netpol.model": "", "sdn_netpol.policy": "", "sdn_netpol.compiler": "", "sdn_netpol.lab": "",
    "sdn_netpol.cli": "", "sdn_netpol": "",
}


def _fake_edges() -> set[tuple[str, str]]:
    return {(a, b) for name, text in FAKE.items() for a, b, _ in imports(name, text, FAKE)}


def test_the_checker_sees_lazy_type_checking_relative_and_submodule_imports() -> None:
    assert _fake_edges() == {
        ("sdn_netpol.model.a", "sdn_netpol.policy.b"),  # from package import submodule
        ("sdn_netpol.policy.b", "sdn_netpol.compiler.c"),  # inside a function
        ("sdn_netpol.compiler.c", "sdn_netpol.model.a"),  # under TYPE_CHECKING
        ("sdn_netpol.compiler.c", "sdn_netpol.compiler.d"),  # relative, twice
        ("sdn_netpol.compiler.c", "sdn_netpol.lab.e"),  # import a.b.c
        ("sdn_netpol.lab.e", "sdn_netpol.cli.f"),
        ("sdn_netpol.cli.f", "sdn_netpol.lab.e"),
    }


def test_the_checker_reports_upward_imports_and_circles() -> None:
    edges = [(a, b, 1) for a, b in _fake_edges()]
    assert {line.split(" at ")[0] for line in upward(edges)} == {
        "sdn_netpol.model.a (model) imports sdn_netpol.policy.b (policy)",
        "sdn_netpol.policy.b (policy) imports sdn_netpol.compiler.c (compiler)",
        "sdn_netpol.compiler.c (compiler) imports sdn_netpol.lab.e (I/O)",
        "sdn_netpol.lab.e (I/O) imports sdn_netpol.cli.f (cli)",
    }
    assert sorted(circles(edges)) == [
        ["sdn_netpol.cli.f", "sdn_netpol.lab.e"],
        ["sdn_netpol.compiler.c", "sdn_netpol.model.a", "sdn_netpol.policy.b"],
    ]
