"""profiles/: the committed SUSHI output is current, complete, and defines every code the adapter writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cart_fhir import __version__, constants

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
RESOURCES = PROFILES / "fsh-generated" / "resources"
GOLDEN = sorted((REPO / "tests" / "data" / "golden").glob("*.out.json"))
PROJECT_CS = f"{constants.BASE}/CodeSystem/"


def _generated() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESOURCES.glob("*.json"))]


def _by_url() -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in _generated() if "url" in r}


def _codings(node: Any) -> Iterator[tuple[str, str]]:
    """Every (system, code) pair of a Coding anywhere in a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node["system"], node["code"]
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codings(value)


def _golden_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in GOLDEN:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            yield path.name, entry["resource"]


def test_generated_output_is_current() -> None:
    """`python profiles/build.py --check` rebuilds with the pinned SUSHI and diffs fsh-generated/."""
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not on PATH: CI must rebuild profiles/ (Node 20+ and npm needed)")
        pytest.skip("npm is not on PATH: cannot rebuild profiles/ here (the committed JSON is still checked)")
    done = subprocess.run([sys.executable, str(PROFILES / "build.py"), "--check"], capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def test_config_version_is_the_package_version() -> None:
    config = (PROFILES / "sushi-config.yaml").read_text(encoding="utf-8")
    assert re.search(rf"^version:\s*{re.escape(__version__)}\s*$", config, re.MULTILINE), \
        f"profiles/sushi-config.yaml version must be {__version__} (adapter/cart_fhir/__init__.py)"


def test_every_structure_definition_has_a_snapshot() -> None:
    sds = [r for r in _generated() if r["resourceType"] == "StructureDefinition"]
    assert sds
    assert [r["id"] for r in sds if not r.get("snapshot", {}).get("element")] == []


@pytest.mark.parametrize("name", sorted(n for n in vars(constants) if n.startswith(("CS_", "PROFILE_"))))
def test_every_project_url_is_published(name: str) -> None:
    url = getattr(constants, name)
    resource = _by_url().get(url)
    assert resource is not None, f"{name} = {url} has no resource in profiles/fsh-generated/resources"
    expected = "CodeSystem" if name.startswith("CS_") else "StructureDefinition"
    assert resource["resourceType"] == expected


def test_every_golden_code_in_a_project_code_system_is_defined() -> None:
    """One source of truth: each code the adapter wrote into a golden output, in one of our CodeSystems,
    is a concept of the published CodeSystem."""
    systems = {url: {c["code"] for c in r.get("concept", [])} for url, r in _by_url().items()
               if r["resourceType"] == "CodeSystem"}
    missing = sorted({f"{system}#{code} ({name})" for name, res in _golden_resources()
                      for system, code in _codings(res)
                      if system.startswith(PROJECT_CS) and code not in systems.get(system, set())})
    assert missing == []


def test_every_golden_profile_is_published() -> None:
    urls = _by_url()
    profiles = {p for _, res in _golden_resources() for p in res.get("meta", {}).get("profile", [])}
    assert profiles and sorted(p for p in profiles if p not in urls) == []


def test_golden_identifiers_use_the_systems_the_profiles_fix() -> None:
    """The profiles fix identifier.system (Provenance: meta.tag system); the writer must use the same."""
    fixed: dict[str, str] = {}
    for url, sd in _by_url().items():
        for element in sd.get("snapshot", {}).get("element", []):
            value = element.get("fixedUri", element.get("patternUri"))  # on a primitive, pattern = fixed
            if element["id"].endswith(("identifier.system", "meta.tag:run.system")) and value:
                fixed[url] = value
    assert len(fixed) == 4
    for name, res in _golden_resources():
        for profile in res.get("meta", {}).get("profile", []):
            ids = res.get("identifier") or res["meta"].get("tag")
            first = ids[0] if isinstance(ids, list) else ids
            assert first["system"] == fixed[profile], (name, res["resourceType"])
