"""House style habit 1: three layers, one direction. Graders and the fact model import no FHIR, web or I/O."""

from __future__ import annotations

import ast
import fnmatch
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cart_fhir

PKG = Path(cart_fhir.__file__).resolve().parent
FORBIDDEN_IN_PURE = ("fhir", "fhirpy", "flask", "requests", "responses", "orjson", "yaml", "urllib", "socket",
                     "cart_fhir.ingest", "cart_fhir.output", "cart_fhir.cli", "cart_fhir.pipeline")
PURE_PACKAGES = {
    "crs": ("__init__", "finding", "fever", "hypotension", "hypoxia", "combine", "grader"),
    "iechs": ("__init__", "table", "labs", "screen", "timing", "suggest", "grader"),
    "icaht": ("__init__", "table", "series", "early", "late", "findings", "grader"),
    "treatments": ("__init__", "table", "linking", "exposure", "outcomes", "analyzer"),
}
PURE = ["model.py", "timeline.py", "grading/result.py", "grading/episodes.py", "grading/attribution.py",
        "grading/icans.py", "grading/hematotox.py", "grading/infections.py", "grading/neuro_other.py",
        *(f"grading/{pkg}/{m}.py" for pkg, modules in PURE_PACKAGES.items() for m in modules)]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parts = path.relative_to(PKG).parent.parts
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(("cart_fhir", *parts, base)).rstrip(".")
            out.add(base)
    return out


def test_graders_are_pure() -> None:
    for rel in PURE:
        bad = {m for m in imports(PKG / rel) for f in FORBIDDEN_IN_PURE if m == f or m.startswith(f + ".")}
        assert not bad, f"{rel} imports {sorted(bad)}"


def test_pure_packages_are_listed_in_full() -> None:
    """A module added to a grader package is checked too."""
    for pkg, modules in PURE_PACKAGES.items():
        assert {p.stem for p in (PKG / "grading" / pkg).glob("*.py")} == set(modules), pkg


def test_only_validate_imports_fhir_resources() -> None:
    users = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
             if any(m.startswith("fhir.resources") for m in imports(p))}
    assert users <= {"validate.py"}


def test_no_print_in_library_code() -> None:
    for p in PKG.rglob("*.py"):
        if p.name == "cli.py":
            continue
        tree = ast.parse(p.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        assert not calls, f"print() in {p.relative_to(PKG)}"


def _users(prefix: str) -> set[str]:
    return {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
            if any(m == prefix or m.startswith(prefix + ".") for m in imports(p))}


def test_one_fhir_client_wraps_fhirpy() -> None:
    """House style habit 10: the rest of the code never imports fhirpy directly."""
    assert _users("fhirpy") == {"remote/client.py"}


def test_only_the_web_layer_imports_flask_and_gunicorn() -> None:
    assert {u.split("/")[0] for u in _users("flask") | _users("gunicorn") | _users("werkzeug")} == {"service"}


def test_http_only_in_the_client_and_web_layers() -> None:
    """Grading, ingest and output never talk to a network; FHIR I/O goes through remote/, inbound through service/."""
    assert {u.split("/")[0] for u in _users("requests")} <= {"remote", "service"}


# ---- the import graph: no loops, and no layer imports a higher one ---------------------------------------

# Low to high; a module may import its own layer and those below. Keys are the first part of the module's path
# in the package ("grading" for grading/crs.py, "cli_*" for cli_remote.py); "" is the package's __init__.
LAYERS: list[set[str]] = [
    # Base: facts, tables, errors, settings machinery; no I/O beyond reading the shipped tables.
    {"", "constants", "errors", "files", "model", "tables", "table_ids", "report", "layering", "ours"},
    # Translation, pure grading, and the client layer. remote/ sits here, below the engine (issue 12): it
    # reads FHIR into ingest's items (remote/read.py uses ingest.codes/index/read) and writes output's
    # resources (remote/write.py), and knows nothing of grading. validate.py is here too, not with the entry
    # points: it checks what output/ builds against the R4B models, and conformance/validate.py uses it.
    {"ingest", "timeline", "grading", "output", "remote", "validate"},
    # The engine and what drives it.
    {"pipeline", "coverage", "summary", "summary_table", "registry", "follow_up", "conformance", "synth", "stream",
     "view", "reviews"},
    # Entry points.
    {"service", "cli", "cli_*"},
]
# The client layer does no grading and knows no engine, report format or web layer.
REMOTE_NEVER_IMPORTS = ("grading", "pipeline", "summary", "registry", "service")


@dataclass(frozen=True)
class Edge:
    source: str  # "cart_fhir.remote.write"
    target: str  # "cart_fhir.output.resources"
    line: int
    when: str  # "import": runs on import (module level); "call": in a function; "typing": TYPE_CHECKING only


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        out[".".join(("cart_fhir", *parts))] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _import_nodes(body: list[ast.stmt], when: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement with when it runs (see Edge.when); module-level code includes try/with/if bodies
    and class bodies."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, when
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _import_nodes(node.body, "typing" if when == "typing" else "call")
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, "typing")
            yield from _import_nodes(node.orelse, when)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _import_nodes([child], when)
                elif isinstance(child, ast.excepthandler):
                    yield from _import_nodes(child.body, when)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules an import statement loads: named modules, `from pkg import submodule`, and the
    packages above them (their __init__ runs too) that are not the importer's own packages."""
    if isinstance(node, ast.Import):
        named = {a.name for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        named = {base} | {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    out = set()
    for name in named:
        if name not in known:
            continue
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    return {t for t in out if t in known and t not in own}


@functools.cache
def import_graph() -> list[Edge]:
    modules = _modules()
    known = set(modules)
    edges = []
    for module, path in modules.items():
        for node, when in _import_nodes(ast.parse(path.read_text()).body, "import"):
            edges.extend(Edge(module, t, node.lineno, when) for t in _targets(module, path, node, known))
    return edges


def layer_of(module: str) -> int:
    key = module.removeprefix("cart_fhir").lstrip(".").split(".")[0]
    for i, names in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(key, n) for n in names):
            return i
    raise AssertionError(f"{module}: not in any layer of LAYERS (tests/test_architecture.py): place it there")


def _cycle(edges: list[Edge]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_graph_is_read() -> None:
    """Guards the two tests below against a parser that finds nothing (and so passes everything)."""
    edges = {(e.source, e.target, e.when) for e in import_graph()}
    assert ("cart_fhir.remote.write", "cart_fhir.output.resources", "import") in edges
    assert ("cart_fhir.cli", "cart_fhir.service.serve", "call") in edges
    assert ("cart_fhir.synth.labs", "cart_fhir.synth.builder", "typing") in edges


def test_no_import_cycles() -> None:
    """Imports inside functions count: deferring one hides a loop from the interpreter, not from the reader
    (app.py <-> the blueprints it imported inside create_app was one). Only `if TYPE_CHECKING:` imports are
    left out (annotations, never run)."""
    cycle = _cycle([e for e in import_graph() if e.when != "typing"])
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_layer_imports_a_higher_one() -> None:
    """Every import counts here, also those inside functions or for type checking: deferring an import does
    not make an upward dependency right."""
    upward = sorted(f"{e.source} (line {e.line}) imports {e.target}" for e in import_graph()
                    if layer_of(e.target) > layer_of(e.source))
    assert not upward, "imports going up a layer:\n" + "\n".join(upward)


def test_the_client_layer_stays_below_the_engine() -> None:
    bad = sorted(f"{e.source} (line {e.line}) imports {e.target}" for e in import_graph()
                 if e.source.startswith("cart_fhir.remote")
                 and any(e.target.startswith(f"cart_fhir.{n}") for n in REMOTE_NEVER_IMPORTS))
    assert not bad, "\n".join(bad)
