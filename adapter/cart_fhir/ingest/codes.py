"""Recognise input codes: standard codes from mappings/, and a site's local codes through FHIR ConceptMaps."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..constants import CS_PRODUCT, NDC, RXNORM
from ..errors import ConfigError
from ..tables import (
    ConceptRow,
    ConditionFindingRow,
    DrugRow,
    InfectionRow,
    MalignancyRow,
    NeuroEventRow,
    Tables,
)

# ConceptMap equivalences (R4) / relationships (R5) that do not mean "this code stands for that one".
_NOT_A_MATCH = frozenset({"unmatched", "disjoint", "not-related-to"})


def codings(cc: Any) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept, tolerating absent or malformed parts (validated by the caller)."""
    if not isinstance(cc, dict):
        return []
    cs = cc.get("coding")
    return [c for c in cs if isinstance(c, dict)] if isinstance(cs, list) else []


class Terminology:
    """Lookups from (system, code) to the concepts the graders use, with ConceptMap translation first."""

    def __init__(self, tables: Tables, concept_maps: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        self.tables = tables
        self._concepts: dict[tuple[str, str], ConceptRow] = {(r.system, r.code): r for r in tables.concepts.rows}
        self._values = {system: frozenset(codes) for system, codes in tables.concepts.values.items()}
        self._drugs_by_code: dict[tuple[str, str], DrugRow] = {
            (RXNORM, d.rxnorm): d for d in tables.drugs.rows if d.rxnorm}
        self._drug_names = [(n, d) for d in tables.drugs.rows for n in d.names]
        self._product_codes: dict[tuple[str, str], str] = {}
        for p in tables.products.rows:
            for code in p.rxnorm:
                self._product_codes[(RXNORM, code)] = p.product
            for code in p.ndc:
                self._product_codes[(NDC, code)] = p.product
        self._product_codes[(CS_PRODUCT, "car-t-cell-product")] = "CAR-T cell product"
        self._product_names = [(n.lower(), p.product) for p in tables.products.rows for n in (p.product, p.brand)]
        self._procedure_codes = {(c.system, c.code) for c in tables.products.procedure_codes}
        self._findings: dict[tuple[str, str], ConditionFindingRow] = {
            (r.system, r.code): r for r in tables.condition_findings.rows}
        self._events: dict[tuple[str, str], tuple[str, InfectionRow | NeuroEventRow]] = {}
        for row in tables.infections.rows:
            self._events[(row.system, row.code)] = ("infections", row)
        for nrow in tables.neuro_events.rows:
            self._events[(nrow.system, nrow.code)] = ("neurotoxicity-other", nrow)
        # Rows with `names`: matched as whole words in a Condition's text when no code matches (sites that
        # code myelitis, cord compression or paraparesis with codes the tables do not list).
        self._event_names = [(_word(n), r) for r in tables.neuro_events.rows for n in r.names]
        self._finding_names = [(_word(n), f) for f in tables.condition_findings.rows for n in f.names]
        self._map: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.add_concept_map(tables.avpu_map, "mappings/avpu-conceptmap.json")
        for name, cm in concept_maps:
            self.add_concept_map(cm, name)

    # ---- ConceptMaps -------------------------------------------------------------------------

    def _known_target(self, system: str, code: str) -> bool:
        return ((system, code) in self._concepts or code in self._values.get(system, ())
                or (system, code) in self._drugs_by_code or (system, code) in self._product_codes
                or (system, code) in self._procedure_codes or (system, code) in self._findings
                or (system, code) in self._events)

    def add_concept_map(self, cm: Any, name: str) -> None:
        """Add a site's ConceptMap; every target must be a concept the adapter knows (checked now, not later)."""
        if not isinstance(cm, dict) or cm.get("resourceType") != "ConceptMap":
            raise ConfigError(f"{name}: expected a FHIR ConceptMap")
        groups = cm.get("group")
        if not isinstance(groups, list) or not groups:
            raise ConfigError(f"{name}: ConceptMap has no group")
        for gi, group in enumerate(groups):
            if not isinstance(group, dict) or not isinstance(group.get("source"), str) \
                    or not isinstance(group.get("target"), str):
                raise ConfigError(f"{name}: group[{gi}] needs 'source' and 'target' code system URLs")
            src_sys, tgt_sys = group["source"], group["target"]
            for ei, element in enumerate(group.get("element") or []):
                where = f"{name}: group[{gi}].element[{ei}]"
                if not isinstance(element, dict) or not isinstance(element.get("code"), str):
                    raise ConfigError(f"{where}: element needs a code")
                for ti, target in enumerate(element.get("target") or []):
                    if not isinstance(target, dict):
                        raise ConfigError(f"{where}.target[{ti}]: not an object")
                    relation = target.get("equivalence", target.get("relationship", "equivalent"))
                    if relation in _NOT_A_MATCH:
                        continue
                    tcode = target.get("code")
                    if not isinstance(tcode, str):
                        raise ConfigError(f"{where}.target[{ti}]: target needs a code")
                    if not self._known_target(tgt_sys, tcode):
                        raise ConfigError(f"{where}.target[{ti}]: {tgt_sys}|{tcode} is not a concept cart-fhir "
                                          "knows (see mappings/concepts.yaml and input-contract.md)")
                    self._map.setdefault((src_sys, element["code"]), []).append((tgt_sys, tcode))

    def _pairs(self, cc: Any) -> list[tuple[str, str]]:
        """(system, code) pairs of a CodeableConcept, site codes translated to their targets."""
        out: list[tuple[str, str]] = []
        for c in codings(cc):
            system, code = c.get("system"), c.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            out.append((system, code))
            out.extend(self._map.get((system, code), ()))
        return out

    # ---- lookups -----------------------------------------------------------------------------

    def concept(self, cc: Any) -> ConceptRow | None:
        # Fast path: the first coding is a standard code we know (most input), no translation needed. One
        # try instead of four isinstance checks (~0.4 us per call); any malformed shape falls through to the
        # validating loop below, which gives the same answer the checks did.
        try:
            c0 = cc["coding"][0]
            row = self._concepts.get((c0["system"], c0["code"]))
        except (TypeError, KeyError, IndexError):
            row = None
        if row is not None:
            return row
        for pair in self._pairs(cc):
            row = self._concepts.get(pair)
            if row is not None:
                return row
        return None

    def first_coding_concepts(self) -> dict[tuple[str, str], ConceptRow]:
        """(system, code) -> what concept() returns for a CodeableConcept whose first coding is that code:
        the code's own concept, else its first ConceptMap target that is one (the fast reader's one lookup,
        ingest/fast.py; concept() tries the first coding and its translations before any later coding)."""
        table = dict(self._concepts)
        for source, targets in self._map.items():
            if source not in table:
                hit = next((self._concepts[t] for t in targets if t in self._concepts), None)
                if hit is not None:
                    table[source] = hit
        return table

    def answer(self, cc: Any, value_system: str) -> str | None:
        """The answer code from `value_system` that a valueCodeableConcept carries (after translation)."""
        # Fast path: the first coding is of that system (most input): it is the first pair _pairs would give,
        # so it is the answer; any other or malformed shape falls through to the loop, as in concept().
        try:
            c0 = cc["coding"][0]
            if c0["system"] == value_system and type(code := c0["code"]) is str:
                return code
        except (TypeError, KeyError, IndexError):
            pass
        for system, code in self._pairs(cc):
            if system == value_system:
                return code
        return None

    def is_answer(self, value_system: str, code: str) -> bool:
        return code in self._values.get(value_system, ())

    def drug(self, cc: Any, texts: Iterable[str] = ()) -> DrugRow | None:
        for pair in self._pairs(cc):
            row = self._drugs_by_code.get(pair)
            if row is not None:
                return row
        blob = " ".join(t.lower() for t in texts if isinstance(t, str))
        if blob:
            for name, row in self._drug_names:
                if name in blob:
                    return row
        return None

    def cart_product(self, cc: Any, texts: Iterable[str] = ()) -> str | None:
        """The CAR-T product a medication is, by code first, else by generic or brand name in its text."""
        for pair in self._pairs(cc):
            name = self._product_codes.get(pair)
            if name is not None:
                return name
        blob = " ".join(t.lower() for t in texts if isinstance(t, str))
        if blob:
            for needle, product in self._product_names:
                if needle in blob:
                    return product
        return None

    def is_cart_procedure(self, cc: Any) -> bool:
        return any(pair in self._procedure_codes for pair in self._pairs(cc))

    def event(self, cc: Any) -> tuple[str, InfectionRow | NeuroEventRow, str] | None:
        """(table, row, "system|code" as found) for an infection or non-ICANS neurological event code; else a
        neurological event row whose name is in the text ("text|<name>")."""
        pairs = self._pairs(cc)
        for pair in pairs:
            hit = self._events.get(pair)
            if hit is not None:
                return hit[0], hit[1], f"{pair[0]}|{pair[1]}"
        blob = " ".join(texts_of(cc)).lower()
        for pattern, row in self._event_names:
            if blob and pattern.search(blob):
                return "neurotoxicity-other", row, next((f"{s}|{c}" for s, c in pairs), f"text|{row.key}")
        return None

    def condition_finding_by_name(self, cc: Any) -> ConditionFindingRow | None:
        """An ICANS finding row whose name is in the Condition's text (rows with `names`, verified: false)."""
        blob = " ".join(texts_of(cc)).lower()
        return next((row for pattern, row in self._finding_names if blob and pattern.search(blob)), None)

    def malignancy(self, cc: Any) -> tuple[MalignancyRow, str] | None:
        """(row, "system|code" or the matched text) of a new-malignancy Condition (second-malignancy.yaml):
        a code row first (first match wins), else a name in its text or displays."""
        pairs = self._pairs(cc)
        for row in self.tables.malignancies.rows:
            for system, code in pairs:
                if row.matches_code(system, code):
                    return row, f"{system}|{code}"
        blob = " ".join(t.lower() for t in texts_of(cc))
        if blob:
            for row in self.tables.malignancies.rows:
                for name in row.names:
                    if name in blob:
                        return row, next((f"{s}|{c}" for s, c in pairs), f"text|{name}")
        return None

    def condition_finding(self, cc: Any) -> ConditionFindingRow | None:
        for pair in self._pairs(cc):
            row = self._findings.get(pair)
            if row is not None:
                return row
        return None


def texts_of(cc: Any) -> list[str]:
    """Free text of a CodeableConcept: its text and every coding display (for name matching)."""
    if not isinstance(cc, dict):
        return []
    out = [cc["text"]] if isinstance(cc.get("text"), str) else []
    out.extend(c["display"] for c in codings(cc) if isinstance(c.get("display"), str))
    return out


def _word(name: str) -> re.Pattern[str]:
    """A name as a whole word or phrase, case-insensitive ("myelitis" does not match "osteomyelitis")."""
    return re.compile(rf"\b{re.escape(name.lower())}\b")
