"""Issue 18 item 5: the fast Observation reader (ingest/fast.py) and the extractor give the same output bytes
and the same run report (counts, issues and their order), on the examples, noisy synthetic cohorts with their
ConceptMap, the streamed path, the official HL7 R4 examples, and one Observation at a time for every shape the
fast path must either read as the extractor does or leave to it."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import RECORDED

from cart_fhir.ingest.fast import ENV
from cart_fhir.ingest.read import Item, read_all
from cart_fhir.ours import OUR_IDENTIFIERS
from cart_fhir.pipeline import Engine, RunResult
from cart_fhir.report import RunReport
from cart_fhir.stream.run import StreamJob, run_stream
from cart_fhir.summary import episode_rows
from cart_fhir.synth.generate import Format, Options, write_cohort
from cart_fhir.synth.noise import Noise

REPO = Path(__file__).resolve().parent.parent
LOCAL = "http://example.org/site-codes"
SITE_MAP = {"resourceType": "ConceptMap", "group": [{"source": LOCAL, "target": "http://loinc.org", "element": [
    {"code": "TEMP", "target": [{"code": "8310-5", "equivalence": "equivalent"}]}]}]}


@pytest.fixture(scope="module")
def engines(engine: Engine) -> Callable[[bool, tuple[tuple[str, Any], ...]], Engine]:
    """Engines by (fast_read, ConceptMaps), built once each from the session's tables."""
    made: dict[tuple[bool, str], Engine] = {}

    def get(fast: bool, maps: tuple[tuple[str, Any], ...] = ()) -> Engine:
        key = (fast, json.dumps(maps))
        if key not in made:
            made[key] = Engine(tables=engine.tables, concept_maps=maps, strict=False, fast_read=fast)
        return made[key]
    return get


def _outputs(eng: Engine, result: RunResult) -> tuple[bytes, bytes, str, str]:
    """Output bytes (the Bundle, the summary rows), the run report without the read-path counts, and each
    patient's facts (readings in order, with what no output shows, e.g. the reference range of a vital sign)."""
    bundle = orjson.dumps(eng.bundle(eng.resources(result, RECORDED)))
    report = dataclasses.replace(result.report, observations_fast=0, observations_fallback=0)
    return (bundle, orjson.dumps(episode_rows(result)), repr(report) + "\n".join(report.summary_lines()),
            repr([pr.patient for pr in result.patients]))


def _both(engines: Any, read: Callable[[], Any], maps: tuple[tuple[str, Any], ...] = (),
          paths: list[Path] | None = None) -> RunReport:
    """Grade the same input on the fast path and through the extractor; assert identical; the fast run's report.
    The fast path takes items already made (FastReader.compact) and, given the paths, also the lines as they
    are parsed (Engine.read: FastReader.item in read_all)."""
    fast_eng, slow_eng = engines(True, maps), engines(False, maps)
    fast, slow = fast_eng.grade(read()), slow_eng.grade(read())
    assert _outputs(fast_eng, fast) == _outputs(slow_eng, slow)
    assert (slow.report.observations_fast, slow.report.observations_fallback) == (0, 0)
    if paths is not None:
        direct = fast_eng.grade(fast_eng.read(paths))
        assert _outputs(fast_eng, direct) == _outputs(slow_eng, slow)
        assert (direct.report.observations_fast, direct.report.observations_fallback) == \
            (fast.report.observations_fast, fast.report.observations_fallback)
    return fast.report


def _share(report: RunReport) -> float:
    return report.observations_fast / (report.observations_fast + report.observations_fallback)


def test_examples(engines: Any) -> None:
    report = _both(engines, lambda: read_all([REPO / "examples"]), paths=[REPO / "examples"])
    assert report.observations_fast > 0 and report.patients_graded == 3


@pytest.mark.parametrize("fmt,noise,local", [
    pytest.param(Format.NDJSON, Noise.HEAVY, True, id="ndjson-heavy-noise-local-codes"),
    pytest.param(Format.BUNDLE, Noise.NONE, False, id="bundle-clean"),
])
def test_synthetic_cohorts(engines: Any, tmp_path: Path, fmt: Format, noise: Noise, local: bool) -> None:
    write_cohort(tmp_path, patients=8, seed=3, days=30, fmt=fmt, options=Options(local, noise))
    maps = (("conceptmap.json", json.loads((tmp_path / "conceptmap.json").read_text())),) if local else ()
    report = _both(engines, lambda: read_all([tmp_path / "fhir"]), maps, [tmp_path / "fhir"])
    assert report.patients_graded == 8
    assert _share(report) >= 0.95  # issue 18: >= 95 % of a noisy cohort's Observations on the fast path


def test_official_hl7_r4_examples(engines: Any, r4_examples: Path) -> None:
    """HL7's own examples: unusual shapes, errors and warnings (subjects not in the input, no effective time,
    bare dates), each one on the same path and in the same order either way."""
    report = _both(engines, lambda: read_all([r4_examples]), paths=[r4_examples])
    assert report.errors and report.warnings and report.observations_fast and report.observations_fallback


def test_streamed_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers build their Engine from the environment: CART_FHIR_FAST_READ=0 gives the same files."""
    write_cohort(tmp_path / "in", patients=4, seed=5, days=12, fmt=Format.NDJSON, options=Options(True, Noise.HEAVY))
    maps = [("conceptmap.json", json.loads((tmp_path / "in" / "conceptmap.json").read_text()))]
    files, counts = [], []
    for value in ("1", "0"):
        monkeypatch.setenv(ENV, value)
        out = tmp_path / f"out{value}"
        run_stream(StreamJob(inputs=[str(tmp_path / "in" / "fhir")], out_dir=out, workers=1, buckets=2,
                             strict=False, concept_maps=maps), recorded=RECORDED)
        report = json.loads((out / "report.json").read_text())
        report.pop("timings_s"), report.pop("throughput")
        counts.append(report.pop("observations_read"))
        files.append(({p.name: p.read_bytes() for p in out.glob("*.ndjson")}, report))
    assert files[0] == files[1] and files[0][0]
    assert counts[1] == {"fast_path": 0, "extractor": 0}
    assert counts[0]["fast_path"] > 19 * counts[0]["extractor"]  # >= 95 %


def test_environment_forces_the_extractor(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0")
    assert Engine(tables=engine.tables).fast_read is False
    monkeypatch.delenv(ENV)
    assert Engine(tables=engine.tables).fast_read is True


# ---- one Observation at a time ------------------------------------------------------------------------------

_EXAMPLE = json.loads((REPO / "examples" / "crs-grade2-tocilizumab.json").read_text())
_TEMP = next(i for i, e in enumerate(_EXAMPLE["entry"]) if e["resource"]["resourceType"] == "Observation"
             and e["resource"]["code"]["coding"][0]["code"] == "8310-5")
_BP = next(i for i, e in enumerate(_EXAMPLE["entry"]) if e["resource"]["resourceType"] == "Observation"
           and "component" in e["resource"])


def _set(**elements: Any) -> Callable[[dict[str, Any]], None]:
    def change(res: dict[str, Any]) -> None:
        for k, v in elements.items():
            if v is None:
                res.pop(k, None)
            else:
                res[k] = v
    return change


def _quantity(**parts: Any) -> Callable[[dict[str, Any]], None]:
    def change(res: dict[str, Any]) -> None:
        res["valueQuantity"] = {**res["valueQuantity"], **parts}
    return change


def _period(res: dict[str, Any]) -> None:
    res["effectivePeriod"] = {"start": res.pop("effectiveDateTime")}


def _site_code(res: dict[str, Any]) -> None:
    res["code"] = {"coding": [{"system": LOCAL, "code": "TEMP"}]}


def _site_code_second(res: dict[str, Any]) -> None:
    res["code"]["coding"].insert(0, {"system": "http://example.org/unknown", "code": "x"})


def _component(**elements: Any) -> Callable[[dict[str, Any]], None]:
    def change(res: dict[str, Any]) -> None:
        res["component"][0].update(elements)
    return change


def _fever(res: dict[str, Any]) -> None:
    res["valueQuantity"] = {**res["valueQuantity"], "value": 39.4}


# (id, entry changed, the change, whether that Observation is read on the fast path)
CASES = [
    ("plain", _TEMP, _fever, True),
    ("entered-in-error", _TEMP, _set(status="entered-in-error"), True),
    ("status-absent", _TEMP, _set(status=None), False),
    ("status-not-a-string", _TEMP, _set(status=["final"]), False),
    ("time-without-offset", _TEMP, _set(effectiveDateTime="2024-05-03T10:00:00"), False),
    ("date-only", _TEMP, _set(effectiveDateTime="2024-05-03"), False),
    ("time-not-valid", _TEMP, _set(effectiveDateTime="2024-05-33T10:00:00Z"), False),
    ("effective-period", _TEMP, _period, False),
    ("no-effective", _TEMP, _set(effectiveDateTime=None), False),
    ("data-absent-reason", _TEMP, _set(dataAbsentReason={"text": "not done"}), False),
    ("modifier-extension", _TEMP, _set(modifierExtension=[{"url": "http://example.org/x", "valueBoolean": True}]),
     False),
    ("implausible", _TEMP, _quantity(value=80), False),
    ("fahrenheit", _TEMP, _quantity(value=102.9, code="[degF]", unit="°F"), True),
    ("comparator", _TEMP, _quantity(comparator=">"), True),
    ("comparator-not-valid", _TEMP, _quantity(comparator="~"), False),
    ("no-unit", _TEMP, lambda r: r.update(valueQuantity={"value": 38.5}), False),
    ("value-a-string", _TEMP, lambda r: r.update(valueQuantity={"value": "38.5", "code": "Cel"}), False),
    ("value-string-instead", _TEMP, lambda r: r.update(valueQuantity=None) or r.pop("valueQuantity")
     or r.update(valueString="38.5"), False),
    ("reference-range", _TEMP, _set(referenceRange=[{"low": {"value": 36, "code": "Cel"},
                                                     "high": {"value": 37.5, "code": "Cel"}}]), True),
    ("reference-range-bad-unit", _TEMP, _set(referenceRange=[{"high": {"value": 37.5, "code": "furlong"}}]), False),
    ("reference-range-not-a-list", _TEMP, _set(referenceRange={"high": {"value": 37.5, "code": "Cel"}}), False),
    ("site-code-through-conceptmap", _TEMP, _site_code, True),
    ("known-code-second", _TEMP, _site_code_second, False),
    ("coding-not-a-list", _TEMP, lambda r: r.update(code={"coding": {"system": "http://loinc.org"}}), False),
    ("site-identifier", _TEMP, _set(identifier=[{"system": "https://hospital.example/obs", "value": "1"}]), True),
    ("cart-fhir-own-result", _TEMP, _set(identifier=[{"system": OUR_IDENTIFIERS + "daily-grade", "value": "1"}]),
     False),
    ("no-id", _TEMP, _set(id=None), False),
    ("no-subject", _TEMP, _set(subject=None), True),
    ("subject-not-an-object", _TEMP, _set(subject="Patient/x"), True),
    ("bp-panel", _BP, lambda r: None, True),
    ("bp-component-unknown-code", _BP, _component(code={"coding": [{"system": LOCAL, "code": "nope"}]}), False),
    ("bp-component-data-absent", _BP, _component(dataAbsentReason={"text": "cuff failed"}), False),
    ("bp-component-not-an-object", _BP, lambda r: r["component"].append("x"), False),
    ("bp-component-implausible", _BP, lambda r: r["component"][0]["valueQuantity"].update(value=900), False),
]


def _versions(res: dict[str, Any], later: bool) -> list[dict[str, Any]]:
    """The Observation twice: a second version (meta.versionId 2, or an older 0) with another value."""
    other = copy.deepcopy(res)
    other["valueQuantity"] = {**res["valueQuantity"], "value": 39.9}
    res["meta"], other["meta"] = {"versionId": "1"}, {"versionId": "2" if later else "0"}
    return [res, other]


def _bundle_file(path: Path, bundle: dict[str, Any], maps: tuple[tuple[str, Any], ...] = ()
                 ) -> tuple[Callable[[], Any], tuple[tuple[str, Any], ...], list[Path]]:
    """_both's arguments for a Bundle written to a file: read whole (read_all) and as the engine reads it."""
    path.write_bytes(orjson.dumps(bundle))
    return (lambda: read_all([path])), maps, [path]


@pytest.mark.parametrize("entry,change,fast", [pytest.param(e, c, f, id=i) for i, e, c, f in CASES])
def test_one_observation(engines: Any, tmp_path: Path, entry: int, change: Callable[[dict[str, Any]], None],
                         fast: bool) -> None:
    bundle = copy.deepcopy(_EXAMPLE)
    change(bundle["entry"][entry]["resource"])
    report = _both(engines, *_bundle_file(tmp_path / "case.json", bundle, (("map", SITE_MAP),)))
    plain = _both(engines, *_bundle_file(tmp_path / "plain.json", _EXAMPLE, (("map", SITE_MAP),)))
    # the changed Observation moves the count of those left to the extractor, or not (the example's heart
    # rates are left to it: no grader reads heart rate, and unused codes are the extractor's to count)
    assert report.observations_fallback - plain.observations_fallback == (0 if fast else 1)


@pytest.mark.parametrize("later", [True, False], ids=["second-version-later", "second-version-older"])
def test_superseded_versions(engines: Any, tmp_path: Path, later: bool) -> None:
    """Two versions of one Observation: the latest wins, in the place of the first (build_index), either way."""
    bundle = copy.deepcopy(_EXAMPLE)
    first = bundle["entry"][_TEMP]
    twice = _versions(first["resource"], later)
    bundle["entry"].append({"fullUrl": first["fullUrl"], "resource": twice[1]})
    report = _both(engines, *_bundle_file(tmp_path / "case.json", bundle))
    plain = _both(engines, *_bundle_file(tmp_path / "plain.json", _EXAMPLE))
    ndjson = tmp_path / "case.ndjson"  # the two versions as NDJSON lines too (Engine.read: FastReader.item)
    ndjson.write_bytes(b"\n".join(orjson.dumps(e["resource"]) for e in bundle["entry"]))
    assert _both(engines, lambda: read_all([ndjson]), paths=[ndjson]).ignored["superseded version"] == 1
    assert report.ignored["superseded version"] == 1
    assert (report.observations_fast, report.observations_fallback) == (plain.observations_fast + 1,
                                                                         plain.observations_fallback)


def test_tables_parse_the_same_with_libyaml() -> None:
    """Start-up parses the mapping tables with libyaml's loader (tables.py): the same values as PyYAML's
    pure-Python safe loader, for every shipped table."""
    import yaml

    from cart_fhir.tables import _SAFE_LOADER, mappings_dir

    assert _SAFE_LOADER is yaml.CSafeLoader  # PyYAML's wheels ship the extension: start-up must not lose it
    files = sorted(mappings_dir().rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=yaml.CSafeLoader) == yaml.safe_load(text), path.name


def test_empty_id_from_a_server(engines: Any) -> None:
    """read.py refuses an empty id; items a FHIR server gave (remote/read.py) are not checked there. The
    index keys such a resource by its fullUrl: the extractor reads it."""
    bundle = copy.deepcopy(_EXAMPLE)
    bundle["entry"][_TEMP]["resource"]["id"] = ""

    def items(doc: dict[str, Any]) -> Callable[[], list[Item]]:
        return lambda: [Item(e["resource"], e.get("fullUrl"), "https://server.example/fhir") for e in doc["entry"]]
    report, plain = _both(engines, items(bundle)), _both(engines, items(_EXAMPLE))
    assert report.observations_fallback == plain.observations_fallback + 1
