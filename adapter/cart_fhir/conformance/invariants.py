"""FHIRPath invariants (ElementDefinition.constraint, severity error) of base R4 and of cart-fhir's profiles.

fhirpathpy is 90-270x slower than plain Python, so this runs in `cart-fhir validate` and in the tests' output
checks, never on the grading path. The R4 rules come from profiles/r4-invariants.json (extracted from the core
package by profiles/build.py), the project's from the snapshots of the profiles a resource claims.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .issue import Issue
from .package import Package

TABLE = "r4-invariants.json"
MAX_DEPTH = 6  # datatype within datatype (Timing.repeat.boundsRange.low); cycles are cut by type anyway

# Invariants fhirpathpy 2.2.4 evaluates wrongly or not at all: not evaluated, each with the reason.
# tests/test_invariants.py pins this list, so it cannot grow silently.
SKIPPED: dict[str, str] = {
    "txt-1": "htmlChecks() is a validator hook (the XHTML whitelist of Narrative.div), not FHIRPath: fhirpathpy "
             "has no such function",
    "txt-2": "htmlChecks() (non-whitespace narrative content): as txt-1",
    "ctm-1": "resolve() needs the referenced resource; a check of one resource has none",
}

# Invariants evaluated in a corrected form: (R4 expression, expression evaluated, why). Pinned by the tests too.
REWRITTEN: dict[str, tuple[str, str, str]] = {
    "dom-3": (("%resource.descendants().as(canonical) | %resource.descendants().as(uri) | "
               "%resource.descendants().as(url))) or descendants().where(reference = '#').exists() or "
               "descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#')"),
              ("%resource.descendants().ofType(canonical) | %resource.descendants().ofType(uri) | "
               "%resource.descendants().ofType(url))) or descendants().where(reference = '#').exists() or "
               "descendants().where(ofType(canonical) = '#').exists() or "
               "descendants().where(ofType(canonical) = '#')"),
              "as() on a collection is an error in FHIRPath N1 and in fhirpathpy; ofType() is what R5 dom-3 uses"),
    "rng-2": ("(low <= high)", "(low.code = high.code implies low.value <= high.value)",
              ("fhirpathpy 2.2.4 raises comparing two Quantities; compared as values when both have the same "
               "code, not compared when the codes differ or are absent")),
}

# Checked in Python, not FHIRPath: they hold on every element (ele-1) or every extension (ext-1) of a resource,
# one FHIRPath call per node would cost more than all the other invariants together.
#   ele-1  "All FHIR elements must have a @value or children": in JSON no {} , [], "" or null value
#          (null only inside a primitive array whose _name twin carries that item, R4 json.html#primitive).
#   ext-1  "Must have either extensions or value[x], not both".
PYTHON_KEYS = ("ele-1", "ext-1")

# dom-2..dom-5 (DomainResource) read nothing but `contained`: true when it is absent, so not evaluated then
# (on a typical Observation they would be four of about ten FHIRPath calls).
ONLY_WITH = {"dom-2": "contained", "dom-3": "contained", "dom-4": "contained", "dom-5": "contained"}

ELE_1 = "invariant ele-1 fails: All FHIR elements must have a @value or children"
EXT_1 = "invariant ext-1 fails: Must have either extensions or value[x], not both"
Step = tuple[str, str | None]  # (element name, choice type suffix: "Quantity" for value[x], "*" any, None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One invariant at one place: the JSON steps from the resource to its context nodes."""

    key: str
    human: str
    expression: str
    steps: tuple[Step, ...]
    model_path: str  # the context node's type path, so fhirpathpy resolves choice elements below it
    source: str  # "R4" or the profile's url


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue() (R4 fhirpath.html, the functions FHIR adds), missing in fhirpathpy 2.2.4: one
    primitive with a value (`_start` without `start` has none). Used by per-1, age-1, cnt-3, bdl-10."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


# trace() (dom-3, ref-1) prints to stdout unless given a callback; hasValue() is added.
_OPTIONS = {"traceFn": lambda _label, _value: None,
            "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}}}


def table_path() -> Path:
    """r4-invariants.json: inside the installed wheel, else profiles/ in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_data" / TABLE, here.parent.parent / "profiles" / TABLE):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{TABLE} not found (looked in {here / '_data'} and {here.parent.parent / 'profiles'})")


@cache
def load_table(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The R4 invariant table's types, parsed once per process."""
    source = path or table_path()
    try:
        return dict(json.loads(source.read_text(encoding="utf-8"))["types"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: not a readable invariant table: {exc}") from exc


def _rewritten(key: str, expression: str) -> str:
    """The expression to evaluate: REWRITTEN's correction when the R4 text is the one it corrects."""
    fix = REWRITTEN.get(key)
    return expression.replace(fix[0], fix[1]) if fix is not None and fix[0] in expression else expression


def _steps(rel: str) -> tuple[Step, ...]:
    return tuple((seg[:-3], "*") if seg.endswith("[x]") else (seg, None) for seg in rel.split(".") if seg)


def _suffix(code: str) -> str:
    return code[:1].upper() + code[1:]


def _children(node: Any, step: Step) -> Iterator[tuple[str, Any]]:
    """(label, value) of one step from a JSON object; arrays are flattened with their index in the label."""
    if not isinstance(node, dict):
        return
    name, suffix = step
    if suffix is None:
        keys = [name] if name in node else []
    elif suffix == "*":
        keys = [k for k in node if k.startswith(name) and k[len(name):len(name) + 1].isupper()]
    else:
        keys = [name + suffix] if name + suffix in node else []
    for key in keys:
        value = node[key]
        if isinstance(value, list):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value))
        else:
            yield key, value


def nodes(resource: dict[str, Any], steps: tuple[Step, ...], label: str) -> Iterator[tuple[str, Any]]:
    """Every node the steps reach from resource, with its path (Observation.component[1].valueQuantity)."""
    found: list[tuple[str, Any]] = [(label, resource)]
    for step in steps:
        found = [(f"{at}.{key}", child) for at, node in found for key, child in _children(node, step)]
    return iter(found)


class Invariants:
    """Compiles each expression once, evaluates the rules of each resource; counts what it could not evaluate."""

    def __init__(self, package: Package, table: dict[str, dict[str, Any]] | None = None) -> None:
        self.package = package
        self.types = table if table is not None else load_table()
        self.core_keys = frozenset(k for t in self.types.values() for k in t["constraints"])
        self.unevaluated: Counter[str] = Counter()  # key: expression raised in fhirpathpy
        self.unsupported: Counter[str] = Counter()  # profile invariants on slices (not applied)
        self._compiled: dict[str, Callable[..., list[Any]]] = {}
        self._rules: dict[tuple[str, tuple[str, ...]], list[Rule]] = {}
        self._type_rules: dict[str, list[Rule]] = {}

    # -- rules --------------------------------------------------------------------------------------------
    def rules(self, rtype: str, profiles: tuple[str, ...] = ()) -> list[Rule]:
        """The FHIRPath rules of a resource type plus those its claimed profiles add (SKIPPED ones left out)."""
        key = (rtype, profiles)
        if key not in self._rules:
            found: dict[tuple[tuple[Step, ...], str], Rule] = {}
            for rule in self._expand(rtype, (), rtype, 0, frozenset({rtype})):
                found.setdefault((rule.steps, rule.key), rule)
            for url in profiles:
                for rule in self._profile_rules(url):
                    found.setdefault((rule.steps, rule.key), rule)
            self._rules[key] = [r for r in found.values() if r.key not in SKIPPED]
        return self._rules[key]

    def type_rules(self, name: str) -> list[Rule]:
        """The rules of a datatype on a node of that type (an extension's value[x])."""
        if name not in self._type_rules:
            found = {(r.steps, r.key): r for r in self._expand(name, (), self._type(name), 0, frozenset({name}))}
            self._type_rules[name] = [r for r in found.values() if r.key not in SKIPPED]
        return self._type_rules[name]

    def _type(self, name: str) -> str:
        return str(self.types[name]["type"]) if name in self.types else name

    def _expand(self, name: str, steps: tuple[Step, ...], model: str, depth: int,
                seen: frozenset[str]) -> Iterator[Rule]:
        t = self.types.get(name)
        if t is None:
            return
        if t["base"]:
            yield from self._expand(t["base"], steps, model, depth, seen)
        for rel, keys, fanned in t["elements"]:
            here = steps + _steps(rel)
            at = f"{model}.{rel.replace('[x]', '')}" if rel else model
            for k in keys:
                human, expression = t["constraints"][k]
                yield Rule(k, human, _rewritten(k, expression), here, at, "R4")
            if depth >= MAX_DEPTH:
                continue
            for tn in fanned:
                if tn in seen:
                    continue
                typed = here[:-1] + ((here[-1][0], _suffix(self._type(tn))),) if rel.endswith("[x]") else here
                yield from self._expand(tn, typed, self._type(tn), depth + 1, seen | {tn})

    def _profile_rules(self, url: str) -> Iterator[Rule]:
        """Invariants a project profile adds (keys the R4 table does not have), on unsliced elements."""
        sd = self.package.profile(url)
        if sd is None:
            return
        for el in sd["snapshot"]["element"]:
            for c in el.get("constraint", []):
                if c.get("severity") != "error" or c["key"] in self.core_keys or c["key"] in PYTHON_KEYS:
                    continue
                if ":" in el["id"]:
                    self.unsupported[f"{c['key']} on {el['id']}"] += 1
                    continue
                rel = el["path"].split(".", 1)[1] if "." in el["path"] else ""
                at = f"{sd['type']}.{rel.replace('[x]', '')}" if rel else sd["type"]
                yield Rule(c["key"], c["human"], c["expression"], _steps(rel), at, url)

    # -- evaluation ---------------------------------------------------------------------------------------
    def _compile(self, expression: str) -> Callable[..., list[Any]]:
        fn = self._compiled.get(expression)
        if fn is None:
            from fhirpathpy import compile as fp_compile  # imported here: the grading path never needs it
            from fhirpathpy.models import models

            fn = self._compiled[expression] = fp_compile(expression, model=models["r4"], options=_OPTIONS)
        return fn

    def holds(self, rule: Rule, node: Any, resource: dict[str, Any]) -> bool | None:
        """Whether the invariant holds on node, or None when fhirpathpy raised (counted in unevaluated)."""
        from fhirpathpy.engine.nodes import ResourceNode

        try:
            result = self._compile(rule.expression)(ResourceNode.create_node(node, rule.model_path),
                                                   {"resource": resource, "rootResource": resource})
        except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exception, TypeError, AttributeError ...
            self.unevaluated[rule.key] += 1
            return None
        # Only false fails. An empty result is FHIRPath's "unknown": fhirpathpy follows the FHIRPath spec where
        # the HL7 Java engine answers false (startsWith() on nothing), so ref-1 on a Reference with only a display
        # or bdl-8 on an entry without fullUrl would be empty here and reported, though the HL7 validator passes.
        return result != [False]

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        """Every invariant of the resource's type and claimed profiles that does not hold, with its node path."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return []
        profiles = tuple(p for p in (resource.get("meta") or {}).get("profile") or [] if isinstance(p, str))
        issues = list(self._python_checks(resource, rtype, resource))
        for rule in self.rules(rtype, profiles):
            guard = ONLY_WITH.get(rule.key)
            if guard is not None and not rule.steps and guard not in resource:
                continue
            issues += self._failures(rule, nodes(resource, rule.steps, rtype), resource)
        return issues

    def _failures(self, rule: Rule, found: Iterator[tuple[str, Any]], resource: dict[str, Any]) -> list[Issue]:
        return [Issue(at, f"invariant {rule.key} fails: {rule.human}") for at, node in found
                if isinstance(node, dict) and self.holds(rule, node, resource) is False]

    def _python_checks(self, obj: dict[str, Any], at: str, resource: dict[str, Any]) -> Iterator[Issue]:
        """ele-1 on every element, ext-1 on every extension, and the datatype rules of extension values."""
        if not obj:
            yield Issue(at, ELE_1)
        for k, v in obj.items():
            here = f"{at}.{k}"
            if isinstance(v, list) and not v:
                yield Issue(here, ELE_1)
            items = v if isinstance(v, list) else [v]
            twin = obj.get(k[1:] if k.startswith("_") else f"_{k}")
            for i, item in enumerate(items):
                item_at = f"{here}[{i}]" if isinstance(v, list) else here
                if item is None or item == "":
                    # a null in a primitive array stands for an item whose _name twin has its id/extensions
                    paired = item is None and isinstance(v, list) and isinstance(twin, list) and i < len(twin) \
                        and twin[i] is not None
                    if not paired:
                        yield Issue(item_at, ELE_1)
                elif isinstance(item, dict) and ("resourceType" not in item or k == "contained"):
                    if k in ("extension", "modifierExtension"):
                        yield from self._extension(item_at, item, resource)
                    yield from self._python_checks(item, item_at, resource)
                # a nested resource other than a contained one (Bundle.entry.resource) is checked on its own

    def _extension(self, at: str, ext: dict[str, Any], resource: dict[str, Any]) -> Iterator[Issue]:
        values = [k for k in ext if k.startswith("value") and k[5:6].isupper()]
        if bool(ext.get("extension")) == bool(values):
            yield Issue(at, EXT_1)
        for k in values:
            name = k[5:]
            if name in self.types and isinstance(ext[k], dict):
                for rule in self.type_rules(name):
                    yield from self._failures(rule, nodes(ext[k], rule.steps, f"{at}.{k}"), resource)
