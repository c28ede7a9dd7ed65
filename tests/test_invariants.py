"""FHIRPath invariants (issue 13 item 7): base R4 (mad-1, cmd-1, ...) and the project's (cart-grade-value) are
evaluated by `cart-fhir validate` and the tests' output checks; every example, published artefact and a synthetic
cohort passes them; what fhirpathpy cannot evaluate is listed here, so the list cannot grow silently."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cart_fhir.cli_validate import validate_command
from cart_fhir.conformance import Checker, Package, default_package_dir
from cart_fhir.conformance.invariants import PYTHON_KEYS, REWRITTEN, SKIPPED, Invariants, load_table
from cart_fhir.conformance.validate import validate_bundle
from cart_fhir.synth.generate import Format, Options, write_cohort
from cart_fhir.synth.noise import Noise

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Package.load(default_package_dir())
CHECKER = Checker(PACKAGE)
UCUM = "http://unitsofmeasure.org"
GRADE_PROFILE = "https://cart-fhir.org/fhir/StructureDefinition/cart-toxicity-grade"


def _keys(resource: dict[str, Any]) -> list[str]:
    """The invariant keys a resource breaks (issue messages start 'invariant KEY fails')."""
    return sorted(i.message.split()[1] for i in CHECKER.invariants.check(resource))


def _ma(dosage: dict[str, Any] | None) -> dict[str, Any]:
    res = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
           "medicationCodeableConcept": {"text": "vancomycin"}, "subject": {"reference": "Patient/p1"},
           "effectiveDateTime": "2024-05-01T10:00:00Z"}
    return res if dosage is None else {**res, "dosage": dosage}


def _grade_obs(**value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "meta": {"profile": [GRADE_PROFILE]}, "status": "final",
            "code": {"text": "CRS grade"}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01", **value}


def _conceptmap(**target: Any) -> dict[str, Any]:
    return {"resourceType": "ConceptMap", "status": "draft",
            "group": [{"element": [{"code": "P", "target": [{"code": "t", **target}]}]}]}


ROUTE_IV = {"route": {"text": "IV"}}
CASES = [
    pytest.param(_ma(None), [], id="mad-1-no-dosage-ok"),
    pytest.param(_ma({**ROUTE_IV, "dose": {"value": 1000, "unit": "mg", "system": UCUM, "code": "mg"}}), [],
                 id="mad-1-dose-ok"),
    pytest.param(_ma({**ROUTE_IV, "rateQuantity": {"value": 50, "unit": "mL/h", "system": UCUM, "code": "mL/h"}}),
                 [], id="mad-1-rate-ok"),
    pytest.param(_ma(ROUTE_IV), ["mad-1"], id="mad-1-route-only"),
    pytest.param(_ma({**ROUTE_IV, "dose": {"value": 1, "comparator": "<", "system": UCUM, "code": "g"}}),
                 ["sqty-1"], id="sqty-1-comparator-on-a-dose"),
    pytest.param(_ma({**ROUTE_IV, "dose": {"value": 1, "code": "g"}}), ["qty-3"], id="qty-3-code-without-system"),
    pytest.param(_conceptmap(equivalence="inexact"), ["cmd-1"], id="cmd-1-inexact-without-comment"),
    pytest.param(_conceptmap(equivalence="inexact", comment="why"), [], id="cmd-1-inexact-with-comment"),
    pytest.param(_conceptmap(equivalence="equivalent"), [], id="cmd-1-equivalent-ok"),
    pytest.param(_grade_obs(), ["cart-grade-value"], id="cart-grade-value-nothing"),
    pytest.param(_grade_obs(valueInteger=0), [], id="cart-grade-value-grade-0"),
    pytest.param(_grade_obs(dataAbsentReason={"text": "no temperature"}), [], id="cart-grade-value-absent-reason"),
    pytest.param(_grade_obs(component=[{"code": {"text": "fever"}, "valueBoolean": True}]), [],
                 id="cart-grade-value-components"),
    pytest.param(_grade_obs(valueInteger=1, dataAbsentReason={"text": "x"}), ["obs-6"], id="obs-6-value-and-reason"),
    pytest.param({**_grade_obs(valueInteger=1), "meta": {}}, ["ele-1"], id="ele-1-empty-object"),
    pytest.param({**_grade_obs(valueInteger=1), "meta": None}, ["ele-1"], id="ele-1-null"),
    pytest.param(_grade_obs(valueInteger=1, effectivePeriod={"start": "2024-05-02", "end": "2024-05-01"}),
                 ["per-1"], id="per-1-end-before-start"),
    pytest.param(_grade_obs(valueInteger=1, extension=[{"url": "x", "valueString": "a", "extension": [
        {"url": "y", "valueString": "b"}]}]), ["ext-1"], id="ext-1-value-and-extensions"),
    pytest.param(_grade_obs(valueInteger=1, extension=[{"url": "x", "valueQuantity": {"value": 1, "code": "g"}}]),
                 ["qty-3"], id="qty-3-inside-an-extension-value"),
    pytest.param(_grade_obs(valueInteger=1, contained=[{"resourceType": "Patient", "id": "p"}],
                            subject={"reference": "#p"}), [], id="dom-3-contained-referenced"),
    pytest.param(_grade_obs(valueInteger=1, contained=[{"resourceType": "Patient", "id": "p"}]), ["dom-3"],
                 id="dom-3-contained-not-referenced"),
    pytest.param(_grade_obs(valueRange={"low": {"value": 3, "system": UCUM, "code": "mg"},
                                        "high": {"value": 2, "system": UCUM, "code": "mg"}}), ["rng-2"],
                 id="rng-2-low-above-high"),
    pytest.param(_grade_obs(valueRange={"low": {"value": 2, "system": UCUM, "code": "mg"},
                                        "high": {"value": 3, "system": UCUM, "code": "mg"}}), [], id="rng-2-ok"),
]


@pytest.mark.parametrize("resource,keys", CASES)
def test_invariants(resource: dict[str, Any], keys: list[str]) -> None:
    assert _keys(resource) == keys
    assert not CHECKER.invariants.unevaluated


def test_a_primitive_array_null_is_fine_when_its_twin_carries_the_item() -> None:
    name = {"given": ["Ann", None], "_given": [None, {"extension": [{"url": "x", "valueString": "y"}]}]}
    assert _keys({"resourceType": "Patient", "name": [name]}) == []
    assert _keys({"resourceType": "Patient", "name": [{"given": ["Ann", None]}]}) == ["ele-1"]


def test_issue_names_the_node_and_the_invariant() -> None:
    (issue,) = CHECKER.invariants.check(_conceptmap(equivalence="inexact"))
    assert issue.path == "ConceptMap.group[0].element[0].target[0]"
    assert issue.message.startswith("invariant cmd-1 fails: If the map is narrower or inexact")


def test_bundle_invariants_are_checked_once_for_the_bundle() -> None:
    entry = {"fullUrl": "https://x.org/Patient/p", "resource": {"resourceType": "Patient", "id": "p"}}
    ok = {"resourceType": "Bundle", "type": "transaction", "entry": [{**entry, "request": {"method": "PUT",
                                                                                             "url": "Patient/p"}}]}
    assert validate_bundle(ok, PACKAGE, CHECKER) == []
    issues = validate_bundle({**ok, "entry": [entry]}, PACKAGE, CHECKER)  # bdl-3: a transaction entry needs request
    assert [(i.resource, i.message.split()[1]) for i in issues] == [("Bundle", "bdl-3")]


# -- what fhirpathpy cannot evaluate: pinned -------------------------------------------------------------------

def test_skipped_and_rewritten_invariants_are_pinned() -> None:
    """Adding to these lists is a decision: change this test with a reason in invariants.py."""
    assert sorted(SKIPPED) == ["ctm-1", "txt-1", "txt-2"]
    assert sorted(REWRITTEN) == ["dom-3", "rng-2"]
    assert PYTHON_KEYS == ("ele-1", "ext-1")
    table = load_table()
    expressions = {k: e for t in table.values() for k, (_, e) in t["constraints"].items()}
    for key, (r4, _, _) in REWRITTEN.items():
        assert r4 in expressions[key], f"{key}: the R4 text the rewrite corrects is gone"


def test_every_function_the_invariants_call_is_implemented() -> None:
    """A new R4 table or fhirpathpy release that needs a function fhirpathpy lacks fails here, not silently."""
    from fhirpathpy.engine import base_invocation_registry

    from cart_fhir.conformance.invariants import _OPTIONS

    known = set(base_invocation_registry) | set(_OPTIONS["userInvocationTable"]) | {"as", "is"}
    table = load_table()
    missing = sorted({f"{key}: {fn}()" for t in table.values() for key, (_, e) in t["constraints"].items()
                      if key not in SKIPPED for fn in re.findall(r"([A-Za-z]+)\(", e) if fn not in known})
    assert missing == []


def test_every_invariant_expression_compiles() -> None:
    invariants = Invariants(PACKAGE)
    for t in load_table().values():
        for key, (_, expression) in t["constraints"].items():
            if key not in SKIPPED:
                invariants._compile(expression)  # raises on a syntax fhirpathpy cannot parse


def test_project_invariants_are_all_applied() -> None:
    """Every invariant the published profiles add is evaluated (none sits on a slice, which is not applied)."""
    invariants = Invariants(PACKAGE)
    project = {c["key"] for sd in PACKAGE.structure_definitions.values() if "snapshot" in sd
               for el in sd["snapshot"]["element"] for c in el.get("constraint", [])
               if c["severity"] == "error" and c["key"] not in invariants.core_keys and c["key"] not in PYTHON_KEYS}
    assert project == {"cart-grade-value"}
    rules = {r.key for url, sd in PACKAGE.structure_definitions.items() if "snapshot" in sd
             for r in invariants.rules(sd["type"], (url,))}
    assert project <= rules
    assert not invariants.unsupported


# -- the validated set: every example, artefact, golden output and a synthetic cohort ---------------------------

def _files() -> list[Path]:
    return [*sorted((REPO / "examples").glob("*.json")),
            *sorted((REPO / "profiles" / "fsh-generated" / "resources").glob("*.json")),
            *sorted((REPO / "tests" / "data" / "golden").glob("*.json")),
            *sorted((REPO / "mappings").glob("*.json")),
            *sorted((REPO / "adapter" / "cart_fhir" / "service" / "definitions").glob("*.json"))]


@pytest.mark.parametrize("path", _files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_resource_is_valid(path: Path) -> None:
    issues = validate_bundle(json.loads(path.read_text(encoding="utf-8")), PACKAGE, CHECKER)
    assert [f"{i.resource}: {i.path}: {i.message}" for i in issues] == []
    assert not CHECKER.invariants.unevaluated


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 patients without noise (collection Bundles) and 20 with heavy noise and local codes (transactions);
    14 days of vital signs (every kind of resource the generator writes, at half the validation time of 30)."""
    root = tmp_path_factory.mktemp("cohorts")
    write_cohort(root / "clean", patients=20, seed=11, days=14)
    write_cohort(root / "noisy", patients=20, seed=12, days=14, fmt=Format.TRANSACTION,
                 options=Options(local_codes=True, noise=Noise.HEAVY))
    return root


@pytest.mark.parametrize("cohort", ["clean", "noisy"])
def test_synthetic_cohort_is_valid(cohorts: Path, cohort: str) -> None:
    checker = Checker(PACKAGE)
    problems = []
    for path in sorted((cohorts / cohort / "fhir").glob("*.json")):
        problems += [f"{path.name}: {i.resource}: {i.path}: {i.message}"
                     for i in validate_bundle(json.loads(path.read_bytes()), PACKAGE, checker)]
    assert problems == []
    assert not checker.invariants.unevaluated


def test_cli_reports_invariants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = copy.deepcopy(json.loads((REPO / "examples" / "child-capd-icans.json").read_text(encoding="utf-8")))
    ma = next(e["resource"] for e in bad["entry"] if e["resource"]["resourceType"] == "MedicationAdministration")
    del ma["dosage"]["dose"]
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    assert validate_command(str(tmp_path / "bad.json"), None) == 1
    err = capsys.readouterr().err
    assert f"MedicationAdministration/{ma['id']}: MedicationAdministration.dosage: invariant mad-1 fails" in err
    assert validate_command(str(REPO / "examples" / "child-capd-icans.json"), None) == 0


# -- an independent check: the real FHIR test server (Medplum's engine) enforces R4 invariants too -------------

def _put_all(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                      for r in resources]}


def test_the_test_server_refuses_what_the_invariants_refuse(fhir: Any) -> None:
    """The test server (tests/fhirserver) rejects mad-1 and cmd-1 as our validator does: so accepting the
    examples and artefacts below is a second, independent opinion."""
    example = json.loads((REPO / "examples" / "child-capd-icans.json").read_text(encoding="utf-8"))
    ma = next(copy.deepcopy(e["resource"]) for e in example["entry"]
              if e["resource"]["resourceType"] == "MedicationAdministration")
    del ma["dosage"]["dose"]
    with pytest.raises(AssertionError, match="mad-1"):
        fhir.load(_put_all([ma]))
    cm = json.loads((REPO / "mappings" / "avpu-conceptmap.json").read_text(encoding="utf-8"))
    for group in cm["group"]:
        for element in group["element"]:
            for target in element["target"]:
                target.pop("comment", None)
    with pytest.raises(AssertionError, match="cmd-1"):
        fhir.load(_put_all([cm]))


@pytest.mark.parametrize("path", [*sorted((REPO / "examples").glob("*.json")),
                                  REPO / "profiles" / "fsh-generated" / "resources"],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_test_server_accepts_every_example_and_artefact(fhir: Any, path: Path) -> None:
    if path.is_dir():
        resources = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(path.glob("*.json"))]
    else:
        resources = [e["resource"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    reply = fhir.load(_put_all(resources))
    assert len(reply["entry"]) == len(resources)


@pytest.mark.parametrize("name", [p.name for p in sorted((REPO / "examples").glob("*.json"))])
def test_the_test_server_accepts_our_output_for_every_example(fhir: Any, name: str) -> None:
    """The golden output of each example, created (POST, urn:uuid references) beside its input."""
    example = json.loads((REPO / "examples" / name).read_text(encoding="utf-8"))
    golden = json.loads((REPO / "tests" / "data" / "golden" / name.replace(".json", ".out.json")).read_text(
        encoding="utf-8"))
    bundle = _put_all([e["resource"] for e in example["entry"]])
    bundle["entry"] += [{"fullUrl": e["fullUrl"], "resource": e["resource"],
                         "request": {"method": "POST", "url": e["resource"]["resourceType"]}} for e in golden["entry"]]
    reply = fhir.load(bundle)
    assert len(reply["entry"]) == len(bundle["entry"])
