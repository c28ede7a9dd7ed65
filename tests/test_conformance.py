"""Profile conformance checker: hand-written snapshots, one deliberate break per case, both sides of each rule."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cart_fhir.cli_validate import validate_command
from cart_fhir.conformance import Checker, Package
from cart_fhir.conformance.validate import validate_bundle

BASE = "https://cart-fhir.org/fhir/test"
PROFILE = f"{BASE}/StructureDefinition/test-adverse-event"
GRADE_EXT = f"{BASE}/StructureDefinition/test-grade"
GRADE_CS = f"{BASE}/CodeSystem/test-grade"
SEV_CS = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
CAT_CS = "http://terminology.hl7.org/CodeSystem/adverse-event-category"
ID_SYSTEM = "https://cart-fhir.org/fhir/identifier/adverse-event"
CORE = "http://hl7.org/fhir/StructureDefinition/"


def _el(eid: str, lo: int = 0, hi: str = "1", *types: str, base_max: str | None = None, **extra: Any) -> dict[str, Any]:
    """One snapshot ElementDefinition; types are codes, or dicts for profiled types."""
    el: dict[str, Any] = {"id": eid, "path": re.sub(r":[^.]+", "", eid), "min": lo, "max": hi,
                          "base": {"path": re.sub(r":[^.]+", "", eid), "min": 0, "max": base_max or hi}}
    if types:
        el["type"] = [t if isinstance(t, dict) else {"code": t} for t in types]
    if ":" in eid.rsplit(".", 1)[-1]:
        el["sliceName"] = eid.rsplit(":", 1)[-1]
    el.update(extra)
    return el


def _ref(*targets: str) -> dict[str, Any]:
    return {"code": "Reference", "targetProfile": [CORE + t for t in targets]}


def _sd(url: str, rtype: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "StructureDefinition", "url": url, "type": rtype, "snapshot": {"element": elements}}


AE = "AdverseEvent"
PROFILE_SD = _sd(PROFILE, AE, [
    _el(AE, 0, "*"),
    _el(f"{AE}.id", 0, "1", "id"),
    _el(f"{AE}.meta", 0, "1", "Meta"),
    _el(f"{AE}.extension", 1, "*", "Extension",
        slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}),
    _el(f"{AE}.extension:grade", 1, "1", {"code": "Extension", "profile": [GRADE_EXT]}, base_max="*"),
    _el(f"{AE}.identifier", 1, "1", "Identifier"),
    *[_el(f"{AE}.identifier.{n}", 0, "1", "string") for n in ("id", "use", "value")],
    _el(f"{AE}.identifier.system", 0, "1", "uri", fixedUri=ID_SYSTEM),
    _el(f"{AE}.actuality", 1, "1", "code", fixedCode="actual",
        binding={"strength": "required", "valueSet": "http://hl7.org/fhir/ValueSet/adverse-event-actuality|4.0.1"}),
    _el(f"{AE}.category", 0, "*", "CodeableConcept",
        slicing={"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"}),
    _el(f"{AE}.category:productUse", 1, "1", "CodeableConcept", base_max="*",
        patternCodeableConcept={"coding": [{"system": CAT_CS, "code": "product-use-error"}]}),
    _el(f"{AE}.event", 1, "1", "CodeableConcept"),
    _el(f"{AE}.subject", 1, "1", _ref("Patient")),
    _el(f"{AE}.date", 0, "1", "dateTime"),
    _el(f"{AE}.severity", 0, "1", "CodeableConcept",
        binding={"strength": "required", "valueSet": f"{BASE}/ValueSet/test-severity"}),
    _el(f"{AE}.resultingCondition", 0, "*", _ref("Condition")),
    _el(f"{AE}.suspectEntity", 0, "*", "BackboneElement"),
    _el(f"{AE}.suspectEntity.instance", 1, "1", _ref("MedicationAdministration", "Medication")),
    _el(f"{AE}.suspectEntity.causality", 0, "*", "BackboneElement"),
    _el(f"{AE}.suspectEntity.causality.assessment", 0, "1", "CodeableConcept"),
])
GRADE_SD = _sd(GRADE_EXT, "Extension", [
    _el("Extension", 0, "*"),
    _el("Extension.id", 0, "1", "string"),
    _el("Extension.extension", 0, "0", "Extension", base_max="*"),
    _el("Extension.url", 1, "1", "uri", fixedUri=GRADE_EXT),
    _el("Extension.value[x]", 1, "1", "CodeableConcept",
        binding={"strength": "required", "valueSet": f"{BASE}/ValueSet/test-grade"}),
])
TERMINOLOGY = [
    {"resourceType": "CodeSystem", "url": GRADE_CS, "content": "complete",
     "concept": [{"code": str(g)} for g in range(1, 5)] + [{"code": "5", "concept": [{"code": "5a"}]}]},
    {"resourceType": "ValueSet", "url": f"{BASE}/ValueSet/test-grade", "compose": {"include": [{"system": GRADE_CS}]}},
    {"resourceType": "ValueSet", "url": f"{BASE}/ValueSet/test-severity",
     "compose": {"include": [{"system": SEV_CS, "concept": [{"code": "mild"}, {"code": "moderate"}]}]}},
    {"resourceType": "ValueSet", "url": f"{BASE}/ValueSet/imports",
     "compose": {"include": [{"valueSet": [f"{BASE}/ValueSet/test-grade"]}],
                 "exclude": [{"system": GRADE_CS, "concept": [{"code": "1"}]}]}},
    {"resourceType": "ValueSet", "url": f"{BASE}/ValueSet/filtered",
     "compose": {"include": [{"system": GRADE_CS, "filter": [{"property": "concept", "op": "is-a", "value": "5"}]}]}},
    {"resourceType": "ValueSet", "url": f"{BASE}/ValueSet/external",
     "compose": {"include": [{"system": "http://loinc.org"}]}},
]
PACKAGE = Package([PROFILE_SD, GRADE_SD, *TERMINOLOGY])

VALID: dict[str, Any] = {
    "resourceType": AE, "meta": {"profile": [PROFILE]},
    "extension": [{"url": GRADE_EXT, "valueCodeableConcept": {"coding": [{"system": GRADE_CS, "code": "2"}]}}],
    "identifier": {"system": ID_SYSTEM, "value": "ae1"},
    "actuality": "actual",
    "category": [{"coding": [{"system": CAT_CS, "code": "product-use-error"}]}],
    "event": {"text": "Cytokine release syndrome"},
    "subject": {"reference": "Patient/p1"},
    "severity": {"coding": [{"system": SEV_CS, "code": "moderate"}]},
    "resultingCondition": [{"reference": "urn:uuid:c1"}],
    "suspectEntity": [{"instance": {"reference": "MedicationAdministration/m1"},
                       "causality": [{"assessment": {"text": "probable"}}]}],
}
FULL_URLS = {"urn:uuid:c1": "Condition", "urn:uuid:o1": "Observation"}


def _set(path: str, value: Any) -> Any:
    """A mutation: set (or with value None delete) one dotted path of the valid example."""
    def mutate(res: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = res
        for key in head:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit() and int(last) == len(node):
            node.append(value)
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


OTHER_EXT = {"url": "https://example.org/other", "valueString": "x"}
GRADE7 = {"url": GRADE_EXT, "valueCodeableConcept": {"coding": [{"system": GRADE_CS, "code": "7"}]}}
CASES = [
    pytest.param(None, [], id="valid"),
    pytest.param(_set("category.1", {"text": "other"}), [], id="extra-category-open-slicing"),
    pytest.param(_set("extension.1", OTHER_EXT), [], id="extra-extension-open-slicing"),
    pytest.param(_set("resultingCondition.0.reference", "Condition/c9"), [], id="reference-literal-ok"),
    pytest.param(_set("extension.0.valueCodeableConcept.coding.0.code", "5a"), [], id="grade-nested-code-ok"),
    pytest.param(_set("identifier", None), ["AdverseEvent.identifier"], id="missing-identifier"),
    pytest.param(_set("identifier.system", "urn:other"), ["AdverseEvent.identifier.system"], id="wrong-fixed-system"),
    pytest.param(_set("actuality", "potential"), ["AdverseEvent.actuality"], id="wrong-fixed-code"),
    pytest.param(_set("extension.0", GRADE7), ["AdverseEvent.extension[0].valueCodeableConcept"],
                 id="grade-code-not-in-required-vs"),
    pytest.param(_set("extension.0", {"url": GRADE_EXT, "valueString": "2"}), ["AdverseEvent.extension[0].valueString"],
                 id="grade-wrong-value-type"),
    pytest.param(_set("extension.0", OTHER_EXT), ["AdverseEvent.extension:grade"], id="missing-grade-extension"),
    pytest.param(_set("extension.1", VALID["extension"][0]), ["AdverseEvent.extension:grade"], id="grade-max-exceeded"),
    pytest.param(_set("severity.coding.0.code", "severe"), ["AdverseEvent.severity"], id="severity-not-in-required-vs"),
    pytest.param(_set("subject.reference", "Group/g1"), ["AdverseEvent.subject"], id="subject-group"),
    pytest.param(_set("resultingCondition.0.reference", "urn:uuid:o1"), ["AdverseEvent.resultingCondition[0]"],
                 id="urn-uuid-wrong-target"),
    pytest.param(_set("foo", 1), ["AdverseEvent.foo"], id="unknown-element"),
    pytest.param(_set("suspectEntity.0.causality.0.bar", 1), ["AdverseEvent.suspectEntity[0].causality[0].bar"],
                 id="unknown-nested-element"),
    pytest.param(_set("category.0", {"text": "other"}), ["AdverseEvent.category:productUse"],
                 id="category-slice-missing"),
    pytest.param(_set("suspectEntity.0.instance", None), ["AdverseEvent.suspectEntity[0].instance"],
                 id="backbone-min-missing"),
    pytest.param(_set("identifier", [VALID["identifier"]]), ["AdverseEvent.identifier"], id="array-where-max-1"),
]


@pytest.mark.parametrize(("mutate", "paths"), CASES)
def test_checker(mutate: Any, paths: list[str]) -> None:
    res = copy.deepcopy(VALID)
    if mutate is not None:
        mutate(res)
    issues = Checker(PACKAGE).check(res, PROFILE, FULL_URLS)
    assert sorted({i.path for i in issues}) == paths, issues


def test_skips_are_counted_not_failed() -> None:
    checker = Checker(PACKAGE)
    assert checker.check(copy.deepcopy(VALID), PROFILE, FULL_URLS) == []
    assert checker.skipped == {"valueset http://hl7.org/fhir/ValueSet/adverse-event-actuality|4.0.1": 1}


def test_unknown_profile_and_wrong_type() -> None:
    assert [i.message for i in Checker(PACKAGE).check(VALID, "urn:nope")] == ["profile urn:nope is not in the package"]
    issues = Checker(PACKAGE).check({"resourceType": "Condition"}, PROFILE)
    assert "constrains AdverseEvent" in issues[0].message


def test_expansion() -> None:
    assert PACKAGE.expand(f"{BASE}/ValueSet/test-grade") == {(GRADE_CS, c) for c in ("1", "2", "3", "4", "5", "5a")}
    assert PACKAGE.expand(f"{BASE}/ValueSet/imports|1.0") == {(GRADE_CS, c) for c in ("2", "3", "4", "5", "5a")}
    assert PACKAGE.expand(f"{BASE}/ValueSet/test-severity") == {(SEV_CS, "mild"), (SEV_CS, "moderate")}
    assert PACKAGE.expand(f"{BASE}/ValueSet/filtered") is None
    assert PACKAGE.expand(f"{BASE}/ValueSet/external") is None
    assert PACKAGE.expand("urn:absent") is None


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": u, "resource": r} for u, r in
                      [("urn:uuid:c1", {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}),
                       *((f"urn:uuid:a{i}", r) for i, r in enumerate(resources))]]}


def test_validate_bundle_locates_issues() -> None:
    bad = copy.deepcopy(VALID)
    bad["id"] = "ae9"
    bad["subject"] = {"reference": "Group/g1"}
    bad["date"] = "yesterday"  # base R4 dateTime: caught by the R4B models, not the snapshot checker
    issues = validate_bundle(_bundle(copy.deepcopy(VALID), bad), PACKAGE)
    assert {(i.entry, i.resource, i.path.split(".")[1]) for i in issues} == {
        (2, "AdverseEvent/ae9", "subject"), (2, "AdverseEvent/ae9", "date")}


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for n, res in enumerate([PROFILE_SD, GRADE_SD, *TERMINOLOGY]):
        (pkg / f"r{n}.json").write_text(json.dumps(res))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_bundle(copy.deepcopy(VALID))))
    broken = copy.deepcopy(VALID)
    broken["foo"] = 1
    bad.write_text(json.dumps(_bundle(broken)))
    assert validate_command(str(good), str(pkg)) == 0
    assert validate_command(str(bad), str(pkg)) == 1
    err = capsys.readouterr().err.splitlines()
    where = f"cart-fhir: error: {bad}: entry[1]: AdverseEvent urn:uuid:a0: AdverseEvent.foo: "
    assert err[0].endswith(
        "0 issue(s): valid (base R4 with its invariants, and each cart-fhir profile a resource claims)")
    assert err[1:] == [where + "base R4: Extra inputs are not permitted",
                       where + "unknown element (not in the profile snapshot)",
                       f"cart-fhir: {bad}: 2 resource(s), 2 issue(s)"]
    (tmp_path / "junk.json").write_text("{not json")
    assert validate_command(str(tmp_path / "junk.json"), str(pkg)) == 2
    assert validate_command(str(tmp_path / "missing.json"), str(pkg)) == 2


GOLDEN = sorted((Path(__file__).parent / "data" / "golden").glob("*.out.json"))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_output_conforms_to_published_profiles(path: Path) -> None:
    from cart_fhir.conformance import default_package_dir
    from cart_fhir.errors import ConfigError

    try:
        package = Package.load(default_package_dir())
    except ConfigError:
        pytest.skip("profiles/fsh-generated/resources not built yet")
    assert validate_bundle(json.loads(path.read_text()), package) == []


def test_tables_must_use_only_published_project_codes(tmp_path: Path) -> None:
    """Start-up check (issue 6, one source of truth): a mapping row with a code the profiles do not define."""
    import shutil

    from cart_fhir.conformance import default_package_dir
    from cart_fhir.conformance.tables_check import check_tables
    from cart_fhir.errors import ConfigError
    from cart_fhir.tables import mappings_dir

    package = Package.load(default_package_dir())
    shipped = tmp_path / "mappings"
    shutil.copytree(mappings_dir(), shipped)
    check_tables(shipped, package)  # as shipped: consistent
    concepts = shipped / "concepts.yaml"
    concepts.write_text(concepts.read_text().replace("high-flow-nasal-cannula,", "high-flow-nasal-canula,"))
    with pytest.raises(ConfigError, match="oxygen-delivery#high-flow-nasal-canula is not defined"):
        check_tables(shipped, package)
