"""One source of truth: every project code the mapping tables use must be defined in the published CodeSystems.

Checked at start-up (Engine construction): a table row naming a cart-fhir code that the profiles package does
not define stops start-up, so code, tables and profiles cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from ..constants import BASE, CS_GRADE, CS_TOXICITY
from ..errors import ConfigError
from ..tables import read_yaml
from .package import Package

PROJECT_SYSTEM = f"{BASE}/CodeSystem/"


def _pairs(node: Any, where: str) -> Iterator[tuple[str, str, str]]:
    """(system, code, where) for every {system, code} object anywhere in a parsed table."""
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and isinstance(code, str):
            yield system, code, where
        for key, value in node.items():
            yield from _pairs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pairs(value, f"{where}[{i}]")


def table_codes(mappings: Path) -> Iterator[tuple[str, str, str]]:
    """Every (project system, code, where) the shipped tables and ConceptMaps use."""
    for path in sorted(mappings.glob("*.yaml")):
        doc = read_yaml(path)  # shared with the table loaders: parsed once per process
        yield from _pairs(doc, path.name)
        if path.name == "concepts.yaml":
            for system, codes in (doc.get("values") or {}).items():
                yield from ((system, c, f"{path.name}.values") for c in codes)
        if path.name == "output-codes.yaml":
            for tox, row in (doc.get("toxicities") or {}).items():
                yield CS_TOXICITY, row["code"], f"{path.name}.toxicities.{tox}.code"
                yield CS_TOXICITY, row["scale"], f"{path.name}.toxicities.{tox}.scale"
            yield from ((CS_GRADE, str(g), f"{path.name}.ncit_grades") for g in (doc.get("ncit_grades") or {}))
    for path in sorted(mappings.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        for g, group in enumerate(doc.get("group") or []):
            for e, element in enumerate(group.get("element") or []):
                for target in element.get("target") or []:
                    if "code" in target:
                        yield group.get("target", ""), target["code"], f"{path.name}.group[{g}].element[{e}]"


def check_tables(mappings: Path, package: Package) -> None:
    """ConfigError naming every project code a table uses that the published CodeSystems do not define."""
    problems = []
    for system, code, where in table_codes(mappings):
        if not system.startswith(PROJECT_SYSTEM):
            continue  # LOINC, SNOMED CT, RxNorm ...: not ours to publish
        defined = package.codes(system)
        if defined is None:
            problems.append(f"{where}: CodeSystem {system} is not published in profiles/")
        elif code not in defined:
            problems.append(f"{where}: {system}#{code} is not defined in the published CodeSystem")
    problems.extend(display_problems(mappings, package))
    if problems:
        raise ConfigError("mapping tables and published profiles disagree:\n  " + "\n  ".join(problems[:50]))


# Displays the writers put on resources today that differ from the published CodeSystem (found when this
# check was added). They are kept so that output stays byte-identical while the grading layer is reorganised
# (issue 12) and are to be aligned when output may change; a test fails once an entry no longer differs, so
# the list can only shrink.
KNOWN_DIFFERENCES = frozenset({
    "toxicities.icaht-early.display",  # the code `icaht` is shared by both windows; the row names its window
    "toxicities.icaht-late.display",
    "toxicities.icaht-early.scale_display",  # published: "..., days 0-30"
    "toxicities.icaht-late.scale_display",  # published: "..., after day 30"
    "toxicities.car-hematotox.scale_display",  # published: "CAR-HEMATOTOX score"
})


def display_problems(mappings: Path, package: Package) -> list[str]:
    """Every display output-codes.yaml writes for a cart-toxicity code must be the published one, and the
    fever component's display must state the fever threshold of the CRS criteria table."""
    doc = read_yaml(mappings / "output-codes.yaml")
    published = package.displays(CS_TOXICITY)
    pairs = [(f"assessment_displays.{c}", c, d) for c, d in (doc.get("assessment_displays") or {}).items()]
    pairs += [(f"component_displays.{c}", c, d) for c, d in (doc.get("component_displays") or {}).items()]
    for tox, row in (doc.get("toxicities") or {}).items():
        pairs.append((f"toxicities.{tox}.scale_display", row["scale"], row["scale_display"]))
        pairs.append((f"toxicities.{tox}.display", row["code"], row["display"]))
    problems = [f"output-codes.yaml {where}: display {display!r} is not the published {published.get(code)!r}"
                for where, code, display in pairs
                if code in published and published[code] != display and where not in KNOWN_DIFFERENCES]
    fever = read_yaml(mappings / "astct-crs-2019.yaml")["fever"]["threshold_celsius"]
    shown = (doc.get("component_displays") or {}).get("fever", "")
    if f">= {float(fever):.1f} C" not in shown:
        problems.append(f"output-codes.yaml component_displays.fever: {shown!r} does not state the fever threshold "
                        f"{fever} C of astct-crs-2019.yaml")
    return problems


@cache
def check_shipped() -> None:
    """The shipped tables against the shipped profiles, once per process (Engine start-up). check_tables reads
    only the package's CodeSystems: start-up parses those files (SUSHI names them CodeSystem-<id>.json), not
    the StructureDefinitions and ValueSets (72 of 812 KB; issue 18, start-up)."""
    from ..tables import mappings_dir
    from .package import default_package_dir

    check_tables(mappings_dir(), Package.load(default_package_dir(), "CodeSystem-*.json"))
