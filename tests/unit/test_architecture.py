"""The shape of the house (docs/architecture.md), checked against the code.

- No import circle among our modules, counting every import that runs: at
  module level and inside functions (lazy). None among our packages, counting
  type-only imports (under TYPE_CHECKING) too: a package never even names a
  type of a package above it.
- The packages import in one direction only: the layers below.
- Every HA state change goes through `decide()`; the step-down sequence is
  written once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = SRC / "tandem"

#: each package (or top-level module) of tandem, with the ones it may import. Nothing
#: may import upwards: cli -> composition -> products -> server -> ha -> the base.
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "net": set(),
    "passwords": set(),
    "native": set(),
    "config": {"errors"},
    "store": {"errors", "config"},
    "model": {"errors"},
    "ha": {"errors", "config", "store", "net"},
    "server": {"errors", "config", "store", "net", "ha"},
    "ams": {"errors", "config", "store", "net", "model", "passwords", "server"},
    "ags": {"errors", "config", "store", "net", "model", "passwords", "server", "native"},
    "client": {"errors", "config", "model"},
    "composition": {"config", "ha", "server", "ams", "ags"},
    "cli": {"errors", "config", "store", "ha", "server", "client", "composition", "ams"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:`."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(path: Path, name: str, known: dict[str, Path], type_only: bool = True) -> set[str]:
    """Every tandem module `path` imports, wherever the import statement is (with
    `type_only=False`, not those under TYPE_CHECKING, which never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "tandem" and t != name)
    return {t for t in found if t in known}


def _graph(type_only: bool = True) -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known, type_only) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tandem"


def test_the_walker_sees_lazy_and_type_checking_imports() -> None:
    g = _graph()
    assert "tandem.ams.admin_service" in g["tandem.composition"]  # inside a function
    assert "tandem.server.client_service" in g["tandem.ams.app"]  # under TYPE_CHECKING
    assert "tandem.server.client_service" not in _graph(type_only=False)["tandem.ams.app"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_modules() -> None:
    assert _cycles(_graph(type_only=False)) == []


def test_no_import_circle_among_packages() -> None:
    packages: dict[str, set[str]] = {}
    for mod, targets in _graph().items():
        packages.setdefault(_package(mod), set()).update(_package(t) for t in targets if _package(t) != _package(mod))
    assert _cycles(packages) == []


def test_packages_import_only_downwards() -> None:
    wrong = []
    for mod, targets in sorted(_graph().items()):
        src = _package(mod)
        if src == "tandem":
            continue
        assert src in LAYERS, f"{src} has no layer: add it to LAYERS and docs/architecture.md"
        for t in sorted(targets):
            dst = _package(t)
            if dst != src and dst not in LAYERS[src]:
                wrong.append(f"{mod} -> {t}")
    assert wrong == []


def test_net_imports_nothing_of_ours() -> None:
    g = _graph()
    assert {t for m, ts in g.items() if m.startswith("tandem.net") for t in ts if not t.startswith("tandem.net")} \
        == set()


def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


def test_every_state_change_goes_through_decide() -> None:
    """`HAController.state` is written in `__init__` and `_set_state` only, and `_set_state`
    is only ever given the state of a decision."""
    path = ROOT / "ha" / "controller.py"
    tree = ast.parse(path.read_text())
    writers = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in ast.walk(fn):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AugAssign) else []
                for t in targets:
                    elts = t.elts if isinstance(t, ast.Tuple) else [t]
                    if any(isinstance(e, ast.Attribute) and e.attr == "state" for e in elts):
                        writers.add(fn.name)
    assert writers == {"__init__", "_set_state"}
    calls = _calls(tree, "_set_state")
    assert calls, "the controller changes state somewhere"
    for c in calls:
        assert ast.unparse(c.args[0]) == "d.state", f"line {c.lineno}: {ast.unparse(c)} is not a decision's state"
    assert "decide(" in path.read_text()


@pytest.mark.parametrize("module", ["ha/controller.py", "ha/actions.py", "ha/endpoints.py", "ha/replicator.py",
                                    "server/process.py"])
def test_the_step_down_sequence_is_written_once(module: str) -> None:
    """Only decide.py's `step_down_actions` lists the step-down; nothing else strings actions together."""
    text = (ROOT / module).read_text()
    assert "step_down_actions" not in text and "Action.FAIL_PENDING," not in text
    decide_src = (ROOT / "ha" / "decide.py").read_text()
    assert decide_src.count("Action.FAIL_PENDING") == 1


def test_controller_is_thin() -> None:
    assert len((ROOT / "ha" / "controller.py").read_text().splitlines()) < 300


#: getattr with a literal name where the object is not ours to declare (argparse namespaces,
#: stdlib exceptions that have the attribute only on some Python builds)
GETATTR_ALLOWED = {("cli/main.py", "func"), ("client/output.py", "json"), ("cli/api.py", "strerror"),
                   ("store/sqlite.py", "sqlite_errorcode")}


def test_no_getattr_seams() -> None:
    """An interface is a declared method, never a `hasattr` probe or a `getattr` with a
    literal name and a default (what a missing method would fall back to)."""
    found = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "hasattr":
                    found.add((rel, ast.unparse(node)))
                elif (node.func.id == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                      and (rel, node.args[1].value) not in GETATTR_ALLOWED):
                    found.add((rel, ast.unparse(node)))
    assert sorted(found) == []
