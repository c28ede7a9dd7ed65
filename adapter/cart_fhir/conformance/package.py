"""Load a folder of FHIR conformance resources and expand the simple ValueSets into code sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError

Code = tuple[str, str]  # (system, code)


def default_package_dir() -> Path:
    """The generated profiles: inside the installed wheel, else profiles/fsh-generated in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_data" / "profiles", here.parent.parent / "profiles" / "fsh-generated" / "resources"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"profiles not found (looked in {here / '_data' / 'profiles'} and "
                      f"{here.parent.parent / 'profiles' / 'fsh-generated' / 'resources'})")


def _canonical(url: str) -> str:
    """Drop a |version suffix: canonical references may pin a version (R4 §2.1.0.8 canonical)."""
    return url.split("|", 1)[0]


def _concepts(concepts: list[dict[str, Any]]) -> Iterator[str]:
    """Every code of a CodeSystem's concept tree (hierarchies nest under concept.concept)."""
    for c in concepts:
        yield c["code"]
        yield from _concepts(c.get("concept", []))


class Package:
    """StructureDefinitions, CodeSystems and ValueSets by canonical url, from resources given or a folder."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.structure_definitions: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        self.value_sets: dict[str, dict[str, Any]] = {}
        kinds = {"StructureDefinition": self.structure_definitions, "CodeSystem": self.code_systems,
                 "ValueSet": self.value_sets}
        for res in resources:
            table = kinds.get(res.get("resourceType", ""))
            if table is not None and "url" in res:
                table[res["url"]] = res
        self._expansions: dict[str, frozenset[Code] | None] = {}

    @classmethod
    def load(cls, folder: str | Path, pattern: str = "*.json") -> Package:
        """Read every file of folder matching pattern (all *.json by default); a file that is not JSON is a
        ConfigError naming it."""
        resources = []
        for path in sorted(Path(folder).glob(pattern)):
            try:
                resources.append(orjson.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: not a readable FHIR JSON resource: {exc}") from exc
        return cls(resources)

    def codes(self, system: str) -> frozenset[str] | None:
        """Every code a CodeSystem of the package defines; None when the package has no such CodeSystem."""
        cs = self.code_systems.get(_canonical(system))
        return frozenset(_concepts(cs.get("concept", []))) if cs is not None else None

    def displays(self, system: str) -> dict[str, str]:
        """code -> display of a CodeSystem of the package (codes without a display are left out)."""
        cs = self.code_systems.get(_canonical(system))
        out: dict[str, str] = {}
        stack = list(cs.get("concept", [])) if cs is not None else []
        while stack:
            c = stack.pop()
            if "display" in c:
                out[c["code"]] = c["display"]
            stack.extend(c.get("concept", []))
        return out

    def profile(self, url: str) -> dict[str, Any] | None:
        """The StructureDefinition with this canonical url, when it has a snapshot."""
        sd = self.structure_definitions.get(_canonical(url))
        return sd if sd is not None and "snapshot" in sd else None

    def expand(self, vs_url: str) -> frozenset[Code] | None:
        """The codes of a ValueSet, or None when it cannot be expanded locally (external, filters)."""
        url = _canonical(vs_url)
        if url not in self._expansions:
            self._expansions[url] = None  # guards against import cycles
            self._expansions[url] = self._expand(url)
        return self._expansions[url]

    def _expand(self, url: str) -> frozenset[Code] | None:
        vs = self.value_sets.get(url)
        if vs is None:
            return None
        if "compose" not in vs:  # a pre-expanded ValueSet (R4 ValueSet.expansion.contains, flat here)
            contains = vs.get("expansion", {}).get("contains")
            return None if contains is None else frozenset((c["system"], c["code"]) for c in contains)
        included: set[Code] = set()
        for inc in vs["compose"].get("include", []):
            part = self._include(inc)
            if part is None:
                return None
            included |= part
        for exc in vs["compose"].get("exclude", []):
            part = self._include(exc)
            if part is None:
                return None
            included -= part
        return frozenset(included)

    def _include(self, inc: dict[str, Any]) -> set[Code] | None:
        """One compose.include: listed concepts or a whole local CodeSystem, intersected with imported sets."""
        if "filter" in inc:
            return None  # property filters need a terminology server
        sets: list[set[Code]] = []
        system = inc.get("system")
        if system is not None:
            if "concept" in inc:
                sets.append({(system, c["code"]) for c in inc["concept"]})
            else:
                cs = self.code_systems.get(system)
                if cs is None or cs.get("content", "complete") != "complete":
                    return None  # an external or fragmentary code system: not ours to expand
                sets.append({(system, code) for code in _concepts(cs.get("concept", []))})
        for imported in inc.get("valueSet", []):
            codes = self.expand(imported)
            if codes is None:
                return None
            sets.append(set(codes))
        if not sets:
            return set()
        # R4 ValueSet.compose.include: system and valueSet parts of one include are intersected
        out = sets[0]
        for s in sets[1:]:
            out &= s
        return out
