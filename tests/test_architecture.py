"""House style habit 1: three layers, one direction. Graders and the fact model import no FHIR, web or I/O."""

from __future__ import annotations

import ast
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
