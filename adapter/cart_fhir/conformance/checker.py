"""Check one resource against a profile snapshot: cardinality, fixed/pattern, required bindings, types, slices.

Reads only StructureDefinition.snapshot (FHIR R4 §2.13 profiling, §5.1 ElementDefinition). Base R4
rules on types SUSHI leaves folded (Identifier.foo, bad dateTime) are left to the R4B models in validate.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .invariants import Invariants
from .issue import Issue
from .package import Package

CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
_SUPPORTED_DISCRIMINATORS = frozenset({"value", "pattern"})


@dataclass(slots=True)
class _Index:
    """A snapshot by element id, with each element's (unsliced) children and its slices."""

    root: str
    elements: dict[str, dict[str, Any]] = field(default_factory=dict)
    named: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # parent id -> name -> child
    choices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # parent id -> stem -> value[x]
    required: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)  # min >= 1, not [x]
    slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fixed: dict[str, tuple[Any, bool]] = field(default_factory=dict)  # element id -> (value, is_pattern)

    @classmethod
    def build(cls, sd: dict[str, Any]) -> _Index:
        elements = sd["snapshot"]["element"]
        idx = cls(root=elements[0]["id"])
        for el in elements:
            eid = el["id"]
            idx.elements[eid] = el
            fp = _fixed_or_pattern(el)
            if fp is not None:
                idx.fixed[eid] = fp
            if "." not in eid:
                continue
            head, tail = eid.rsplit(".", 1)
            if ":" in tail:
                base, name = tail.split(":", 1)
                if "/" not in name:  # re-slices (a:b/c) are not supported; their parent slice still is
                    idx.slices.setdefault(f"{head}.{base}", []).append(el)
            else:
                idx.named.setdefault(head, {})
                if tail.endswith("[x]"):
                    idx.choices.setdefault(head, {})[tail[:-3]] = el
                else:
                    idx.named[head][tail] = el
                    if el.get("min", 0) > 0:
                        idx.required.setdefault(head, []).append((tail, el))
        return idx


def _fixed_or_pattern(el: dict[str, Any]) -> tuple[Any, bool] | None:
    """(value, is_pattern) of an element's fixed[x] or pattern[x], if any."""
    for key, value in el.items():
        if key.startswith("fixed"):
            return value, False
        if key.startswith("pattern"):
            return value, True
    return None


def _subset(pattern: Any, value: Any) -> bool:
    """pattern[x] semantics (R4 ElementDefinition.pattern[x]): every value in the pattern is present."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _subset(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, list):
        values = value if isinstance(value, list) else [value]
        return all(any(_subset(p, v) for v in values) for p in pattern)
    return bool(pattern == value)


def _walk(value: Any, segments: list[str]) -> list[Any]:
    """Values at a dotted path, flattening arrays (the discriminator path language of R4 §5.1.0.5)."""
    values = [value]
    for seg in segments:
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, dict) and seg in v:
                x = v[seg]
                nxt.extend(x if isinstance(x, list) else [x])
        values = nxt
    return values


def _type_suffix(code: str) -> str:
    """valueCodeableConcept <- CodeableConcept, valueString <- string (R4 §2.24.0.1 choice names)."""
    return code[:1].upper() + code[1:]


class Checker:
    """Checks resources against the profiles of one Package; counts what it had to skip."""

    def __init__(self, package: Package) -> None:
        self.package = package
        self.skipped: Counter[str] = Counter()
        self._indexes: dict[str, _Index] = {}
        self._invariants: Invariants | None = None

    @property
    def invariants(self) -> Invariants:
        """The FHIRPath invariants of R4 and of this package's profiles, compiled as they are first used."""
        if self._invariants is None:
            self._invariants = Invariants(self.package)
        return self._invariants

    def index(self, url: str) -> _Index | None:
        if url not in self._indexes:
            sd = self.package.profile(url)
            if sd is None:
                return None
            self._indexes[url] = _Index.build(sd)
        return self._indexes[url]

    def check(self, resource: dict[str, Any], profile: str,
              full_urls: Mapping[str, str] | None = None) -> list[Issue]:
        """Issues of resource against profile; full_urls maps Bundle fullUrls to resource types."""
        idx = self.index(profile)
        rtype = resource.get("resourceType", "?")
        if idx is None:
            return [Issue(rtype, f"profile {profile} is not in the package")]
        run = _Run(self, full_urls or {})
        if rtype != idx.root:
            run.error(rtype, f"profile {profile} constrains {idx.root}, not {rtype}")
        else:
            run.children(resource, idx.root, rtype, idx)
        return run.issues

    def target_type(self, url: str) -> str | None:
        """The resource type a Reference targetProfile names (core or in the package)."""
        sd = self.package.structure_definitions.get(url.split("|", 1)[0])
        if sd is not None:
            return str(sd["type"])
        return url[len(CORE_SD):] if url.startswith(CORE_SD) else None


class _Run:
    """The state of one check: the issues found and the Bundle's fullUrl -> type map."""

    def __init__(self, checker: Checker, full_urls: Mapping[str, str]) -> None:
        self.checker = checker
        self.full_urls = full_urls
        self.issues: list[Issue] = []

    def error(self, path: str, message: str) -> None:
        self.issues.append(Issue(path, message))

    def children(self, obj: dict[str, Any], eid: str, path: str, idx: _Index) -> None:
        """Check obj's keys against the snapshot children of element eid; unknown keys are errors."""
        named, choices = idx.named[eid], idx.choices.get(eid, {})
        chosen: dict[str, list[str]] = {}
        for key, value in obj.items():
            name = key[1:] if key[:1] == "_" else key  # _field: a primitive's id/extensions (R4 §2.6.2)
            child = named.get(name)
            if child is not None:
                if name == key:
                    self._element(value, child, f"{path}.{name}", idx)
                continue
            stem = next((st for st in choices if name.startswith(st) and name[len(st):len(st) + 1].isupper()), None)
            if stem is not None:
                chosen.setdefault(stem, []).append(name)
            elif not (key == "resourceType" and eid == idx.root):
                self.error(f"{path}.{key}", "unknown element (not in the profile snapshot)")
        for stem, child in choices.items():
            if stem in chosen or child["min"] > 0:
                self._choice(obj, child, stem, sorted(set(chosen.get(stem, []))), path, idx)
        for name, child in idx.required.get(eid, []):
            if name not in obj and "_" + name not in obj:
                self._cardinality(child, 0, f"{path}.{name}")

    def _element(self, value: Any, child: dict[str, Any], path: str, idx: _Index) -> None:
        """One present child: array-ness against the base, cardinality, slices, then each item."""
        base_max = child.get("base", {}).get("max", child["max"])
        if isinstance(value, list) != (base_max != "1"):
            self.error(path, "must be an array" if base_max != "1" else "must not be an array")
        items = value if isinstance(value, list) else [value]
        self._cardinality(child, len(items), path)
        paths = [f"{path}[{i}]" for i in range(len(items))] if isinstance(value, list) else [path]
        targets = self._slice(items, child, paths, idx)
        for item, item_path, el in zip(items, paths, targets, strict=True):
            self.value(item, el, item_path, idx)

    def _choice(self, obj: dict[str, Any], child: dict[str, Any], stem: str, keys: list[str],
                path: str, idx: _Index) -> None:
        """A choice element: the key's type suffix must be an allowed type; a type slice narrows it."""
        allowed = {_type_suffix(t["code"]): t["code"] for t in child.get("type", [])}
        self._cardinality(child, len(keys), f"{path}.{stem}[x]")
        type_slices = {s.get("sliceName"): s for s in idx.slices.get(child["id"], [])}
        for key in keys:
            if key[len(stem):] not in allowed:
                self.error(f"{path}.{key}", f"type {key[len(stem):]} not allowed here "
                           f"(allowed: {', '.join(sorted(allowed.values()))})")
            elif key in obj:
                self.value(obj[key], type_slices.get(key, child), f"{path}.{key}", idx)

    def _cardinality(self, el: dict[str, Any], count: int, path: str) -> None:
        lo, hi = el.get("min", 0), el.get("max", "*")
        if count < lo:
            self.error(path, f"minimum cardinality {lo} not met (found {count})")
        elif hi != "*" and count > int(hi):
            self.error(path, "element is prohibited by the profile (max 0)" if hi == "0"
                       else f"maximum cardinality {hi} exceeded (found {count})")

    def _slice(self, items: list[Any], el: dict[str, Any], paths: list[str], idx: _Index) -> list[dict[str, Any]]:
        """Assign items to slices (value/pattern discriminators); check slice counts and closed slicing."""
        slices, slicing = idx.slices.get(el["id"], []), el.get("slicing")
        if not slices or slicing is None:
            return [el] * len(items)
        discs = slicing.get("discriminator", [])
        if not all(d["type"] in _SUPPORTED_DISCRIMINATORS for d in discs):
            self.checker.skipped[f"discriminator {el['id']}"] += 1
            return [el] * len(items)
        targets, counts = [], Counter[str]()
        for item, item_path in zip(items, paths, strict=True):
            match = next((s for s in slices if self._matches(item, s, discs, idx)), None)
            if match is None and slicing.get("rules") == "closed":
                self.error(item_path, "matches no slice and the slicing is closed")
            if match is not None:
                counts[match["id"]] += 1
            targets.append(match or el)
        base_path = paths[0].rsplit("[", 1)[0] if paths else el["path"]
        for s in slices:
            self._cardinality(s, counts[s["id"]], f"{base_path}:{s['sliceName']}")
        return targets

    def _matches(self, item: Any, slice_el: dict[str, Any], discs: list[dict[str, Any]], idx: _Index) -> bool:
        for d in discs:
            segments = [] if d["path"] == "$this" else d["path"].split(".")
            expected = self._expected(slice_el, segments, idx)
            actual = _walk(item, segments)
            if not any(_subset(e, a) if pat else e == a for e, pat in expected for a in actual):
                return False
        return True

    def _expected(self, slice_el: dict[str, Any], segments: list[str], idx: _Index) -> list[tuple[Any, bool]]:
        """The fixed/pattern value(s) a slice sets at a discriminator path, read from the nearest element."""
        for k in range(len(segments), -1, -1):
            el = idx.elements.get(slice_el["id"] + "".join("." + s for s in segments[:k]))
            fp = el and idx.fixed.get(el["id"])
            if fp:
                return [(v, fp[1]) for v in _walk(fp[0], segments[k:])]
        if segments == ["url"]:  # extension slices: SUSHI does not unroll .url; the type's profile is the url
            return [(p, False) for t in slice_el.get("type", []) for p in t.get("profile", [])]
        return []

    def value(self, value: Any, el: dict[str, Any], path: str, idx: _Index) -> None:
        """Element-level rules on one value, then its children (or its extension definition)."""
        fp = idx.fixed.get(el["id"])
        if fp is not None and not (_subset(fp[0], value) if fp[1] else fp[0] == value):
            self.error(path, f"{'does not match pattern' if fp[1] else 'is not the fixed value'} {fp[0]!r}")
        binding = el.get("binding", {})
        if binding.get("strength") == "required" and "valueSet" in binding:
            self._binding(value, binding["valueSet"], path)
        types = el.get("type", [])
        if isinstance(value, dict) and any(t["code"] == "Reference" for t in types):
            self._reference(value, types, path)
        if not isinstance(value, dict):
            return
        if el["id"] in idx.named:
            self.children(value, el["id"], path, idx)
            return
        profiles = [p for t in types if t["code"] == "Extension" for p in t.get("profile", [])]
        if profiles and el["id"] != idx.root:
            ext = self.checker.index(profiles[0])
            if ext is None:
                self.checker.skipped[f"extension definition {profiles[0]}"] += 1
            else:
                self.children(value, ext.root, path, ext)

    def _binding(self, value: Any, vs: str, path: str) -> None:
        codes = self.checker.package.expand(vs)
        if codes is None:
            self.checker.skipped[f"valueset {vs}"] += 1
            return
        if isinstance(value, str):  # code
            ok, shown = any(c == value for _, c in codes), value
        elif isinstance(value, dict) and ("coding" in value or "text" in value):  # CodeableConcept
            codings = value.get("coding", [])
            ok = any((c.get("system"), c.get("code")) in codes for c in codings)
            shown = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings) or "no coding"
        elif isinstance(value, dict):  # Coding, Quantity
            ok, shown = (value.get("system"), value.get("code")) in codes, f"{value.get('system')}#{value.get('code')}"
        else:
            return
        if not ok:
            self.error(path, f"{shown} is not in the required ValueSet {vs}")

    def _reference(self, value: dict[str, Any], types: list[dict[str, Any]], path: str) -> None:
        """Reference(X) targets: by Reference.type, the literal Type/id, or a Bundle urn:uuid fullUrl."""
        targets = [p for t in types if t["code"] == "Reference" for p in t.get("targetProfile", [])]
        if not targets or CORE_SD + "Resource" in targets:
            return
        allowed = {self.checker.target_type(t) for t in targets}
        ref = str(value.get("reference", ""))
        rtype = value.get("type")
        if rtype is None and ref.startswith("urn:"):
            rtype = self.full_urls.get(ref)
        elif rtype is None and ref and not ref.startswith("#"):
            parts = ref.split("/_history/", 1)[0].split("/")
            rtype = parts[-2] if len(parts) >= 2 else None
        if rtype is None or None in allowed:
            self.checker.skipped["reference target"] += 1
        elif rtype not in allowed:
            names = ", ".join(sorted(a for a in allowed if a))
            self.error(path, f"reference to {rtype} not allowed (allowed: {names})")
