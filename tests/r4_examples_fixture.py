"""The official HL7 FHIR R4 examples (npm `hl7.fhir.r4.examples@4.0.1`) as grading input, fetched once.

npm serves the examples package (shared/notes/profiles-toolchain.md: 18.8 MB tgz); the HL7 package registry
is not reachable. `install()` packs it once per pin into the XDG cache (flock-guarded, renamed into place when
complete, like fhir_server_fixture.py), checks the registry's sha512 pinned in profiles/build.py, and keeps only
what grading reads: every standalone example of the types the adapter uses as one NDJSON file, and each
example Bundle holding any of them as a JSON file. The `r4_examples` fixture fails (never skips) when it cannot.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from cache_install import COMPLETE, install_once, run_tool

REPO = Path(__file__).resolve().parent.parent
TYPES = ("Patient", "Observation", "MedicationAdministration", "MedicationStatement", "Procedure", "Condition",
         "Medication")
TIMEOUT_S = float(os.environ.get("CART_FHIR_NPM_TIMEOUT", "300"))


class ExamplesUnavailable(Exception):
    """The examples package cannot be fetched or unpacked here (reason in the message)."""


def _pin() -> tuple[str, str]:
    """(package@version, sha512 integrity) as pinned in profiles/build.py (one pin for the repository; read
    with ast, as build.py is a script, not a module of the package)."""
    found: dict[str, str] = {}
    for node in ast.parse((REPO / "profiles" / "build.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("EXAMPLES", "EXAMPLES_INTEGRITY"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["EXAMPLES"], found["EXAMPLES_INTEGRITY"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cart-fhir" / "r4-examples"


def install(root: Path | None = None) -> Path:
    """The folder of grading input built from the examples package (made once per pin: cache_install)."""
    package, integrity = _pin()
    target = (root or cache_root()) / hashlib.sha256(f"{package} {integrity}".encode()).hexdigest()[:16]
    if (target / COMPLETE).exists():
        return target
    if shutil.which("npm") is None:
        raise ExamplesUnavailable(f"npm is not on PATH: the {package} test input is fetched with `npm pack`")
    return install_once(target, lambda work: _build(package, integrity, work))


def _build(package: str, integrity: str, work: Path) -> None:
    command = ["npm", "pack", package, "--json", "--pack-destination", str(work)]
    done = run_tool(command, work, TIMEOUT_S, ExamplesUnavailable)
    tgz = work / json.loads(done.stdout)[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != integrity:
        raise ExamplesUnavailable(f"{tgz.name}: sha512 {digest} is not the pinned {integrity} (profiles/build.py)")
    lines: list[bytes] = []
    bundles = 0
    with tarfile.open(tgz) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".json") or name.split("-", 1)[0] not in (*TYPES, "Bundle"):
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            doc = json.loads(data)
            if doc.get("resourceType") == "Bundle":
                inner = {e.get("resource", {}).get("resourceType") for e in doc.get("entry") or []
                         if isinstance(e, dict) and isinstance(e.get("resource"), dict)}
                if inner & set(TYPES):
                    (work / name).write_bytes(data)
                    bundles += 1
            elif doc.get("resourceType") in TYPES:
                lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    if not lines or not bundles:
        raise ExamplesUnavailable(f"{tgz.name} holds no examples of {', '.join(TYPES)}: not the package expected")
    (work / "examples.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    tgz.unlink()


@pytest.fixture(scope="session")
def r4_examples() -> Path:
    """The folder of HL7 R4 example input: examples.ndjson and Bundle-*.json."""
    try:
        return install()
    except ExamplesUnavailable as exc:
        pytest.fail(f"the official HL7 R4 examples are needed by this test and could not be fetched: {exc}")
