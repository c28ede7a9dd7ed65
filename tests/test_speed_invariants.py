"""Invariants that the speed-ups rely on: a faster computation must give exactly what the plain one gives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from cart_fhir.errors import BadInput
from cart_fhir.ingest.codes import Terminology
from cart_fhir.ingest.extract import Extractor
from cart_fhir.ingest.index import Indexed
from cart_fhir.ingest.read import Item
from cart_fhir.ingest.units import UnitConverter
from cart_fhir.model import Infusion, Moment, PatientData, Reading
from cart_fhir.output.ids import _NS, full_url
from cart_fhir.report import RunReport
from cart_fhir.tables import load_tables
from cart_fhir.timeline import courses


@pytest.mark.parametrize(("system", "value"), [
    pytest.param("urn:cart-fhir:observation", "Patient/p1|crs|2023-05-01", id="ascii"),
    pytest.param("", "", id="empty"),
    pytest.param("http://example.org/ids", "é|ü|ß|日本", id="non-ascii-utf8"),
    pytest.param("s", "x" * 1000, id="long-value"),
    pytest.param("a|b", "|", id="separator-inside"),
    pytest.param("tab\tnewline\n", "\x00\x1f", id="control-chars"),
])
def test_full_url_equals_uuid5(system: str, value: str) -> None:
    # ids.full_url computes uuid5 by hand (faster); it must stay the RFC 4122 uuid5 of "system|value".
    assert full_url(system, value) == f"urn:uuid:{uuid.uuid5(_NS, f'{system}|{value}')}"


def _moment(at: datetime) -> Moment:
    return Moment(at=at, date_only=False)


_TZ = timezone(timedelta(hours=-5))
_T0 = datetime(2024, 3, 1, 10, 0, tzinfo=_TZ)


@pytest.mark.parametrize("infusion_hours", [
    pytest.param((0,), id="one-course"),
    pytest.param((0, 24 * 10), id="re-infusion-day10"),
    pytest.param((0, 24 * 10, 24 * 20), id="three-courses"),
])
def test_course_readings_are_time_ordered(infusion_hours: tuple[int, ...]) -> None:
    # iechs_screen._Labs.of reads course.readings and pre_readings without re-sorting them.
    hours = [37, -30, 5, 250, -2, 1, 480, 240, 100, 500, -100, 3]  # unsorted on purpose, mixed offsets
    readings = [Reading("temperature", _moment((_T0 + timedelta(hours=h)).astimezone(
        UTC if i % 2 else _TZ)), 38.0, f"Observation/o{i}", f"Observation/o{i}")
        for i, h in enumerate(hours)]
    patient = PatientData(key="Patient/p", id="p", reference={"reference": "Patient/p"}, birth_date=None,
                          readings=readings,
                          infusions=[Infusion(ref=f"MedicationAdministration/i{h}",
                                              when=_moment(_T0 + timedelta(hours=h)), product="x")
                                     for h in infusion_hours])
    out, _ = courses(patient)
    assert len(out) == len(infusion_hours)
    for c in out:
        for pairs in (c.readings, c.pre_readings):
            ats = [r.when.at for _, r in pairs]
            assert ats == sorted(ats)


@pytest.mark.parametrize("concepts", [
    pytest.param(("temperature",), id="one-concept"),
    pytest.param(("temperature", "spo2"), id="two-concepts-interleaved"),
    pytest.param(("spo2", "temperature"), id="two-concepts-other-order"),
    pytest.param(("absent",), id="concept-without-readings"),
])
def test_course_concept_index_equals_scan(concepts: tuple[str, ...]) -> None:
    # Graders read Course.of / of_any / pre_of instead of scanning every reading: same pairs, same order,
    # also when readings of two concepts share one time (a tie the index must not reorder).
    hours = [-30, -30, -2, 1, 1, 5, 37, 37, 100]
    readings = [Reading(("temperature", "spo2")[i % 2], _moment(_T0 + timedelta(hours=h)), float(i),
                        f"Observation/o{i}") for i, h in enumerate(hours)]
    patient = PatientData(key="Patient/p", id="p", reference={"reference": "Patient/p"}, birth_date=None,
                          readings=readings,
                          infusions=[Infusion(ref="MedicationAdministration/i", when=_moment(_T0), product="x")])
    (course,), _ = courses(patient)
    assert course.of_any(concepts) == [p for p in course.readings if p[1].concept in concepts]
    for c in concepts:
        assert course.of(c) == [p for p in course.readings if p[1].concept == c]
        assert course.pre_of(c) == [p for p in course.pre_readings if p[1].concept == c]
    assert course.pre_readings and course.readings  # both sides of day 0 are exercised


# ---- extraction caches (round 3) ----------------------------------------------------------------------

_LOINC = "http://loinc.org"
_SITE = "urn:site:lab"
_SITE_MAP = {"resourceType": "ConceptMap", "group": [{"source": _SITE, "target": _LOINC, "element": [
    {"code": "CRP-SERUM", "target": [{"code": "1988-5", "equivalence": "equivalent"}]}]}]}


@pytest.fixture(scope="module")
def term() -> Terminology:
    return Terminology(load_tables(), [("site-map", _SITE_MAP)])


@pytest.mark.parametrize("cc", [
    pytest.param({"coding": [{"system": _LOINC, "code": "8310-5"}]}, id="known-first"),
    pytest.param({"coding": [{"system": _SITE, "code": "CRP-SERUM"}]}, id="conceptmap-local"),
    pytest.param({"coding": [{"system": _LOINC, "code": "0000-0"}]}, id="unknown"),
    pytest.param({"coding": [{"system": _LOINC, "code": "0000-0"}, {"system": _LOINC, "code": "8310-5"}]},
                 id="known-second"),
    pytest.param({"coding": [{"code": "8310-5"}]}, id="no-system"),
    pytest.param({"coding": [{"system": [_LOINC], "code": "8310-5"}]}, id="unhashable-system"),
    pytest.param({"coding": ["8310-5", {"system": _LOINC, "code": "8310-5"}]}, id="first-not-object"),
    pytest.param({"coding": {"system": _LOINC, "code": "8310-5"}}, id="coding-not-list"),
    pytest.param({"coding": []}, id="empty"),
    pytest.param("8310-5", id="string"),
    pytest.param(None, id="absent"),
])
def test_concept_fast_path_equals_translated_lookup(term: Terminology, cc: Any) -> None:
    # Terminology.concept tries the first coding with one try/except; it must agree with the validating loop.
    plain = next((term._concepts[p] for p in term._pairs(cc) if p in term._concepts), None)
    assert term.concept(cc) is plain


def _extractor() -> Extractor:
    return Extractor(Terminology(load_tables()), UnitConverter({}, {("[degF]", "Cel"): (5 / 9, -160 / 9)}),
                     RunReport())


_AT = Indexed({"resourceType": "Observation"}, "Observation/o1", Item({}, None, "in.ndjson", 1))


@pytest.mark.parametrize("quantities", [
    pytest.param(({"value": 98, "code": "%"}, {"value": 98.0, "code": "%"}), id="int-then-float"),
    pytest.param(({"value": 100.4, "code": "[degF]"}, {"value": 100.4, "code": "[degF]"}), id="converted-repeat"),
    pytest.param(({"value": 5, "code": "%", "comparator": "<"}, {"value": 5, "code": "%"}), id="comparator"),
    pytest.param(({"value": 0.0, "code": "%"}, {"value": -0.0, "code": "%"}), id="signed-zero"),
    pytest.param(({"value": 1, "code": "%"}, {"value": True, "code": "%"}), id="bool-after-one"),
    pytest.param(({"value": 1, "code": "%"}, {"value": 1, "code": "%", "unit": ["%"]}), id="unhashable"),
    pytest.param(({"value": 37, "unit": "Cel"}, {"value": 37, "code": "", "unit": "Cel"}), id="unit-only"),
])
def test_quantity_cache_equals_uncached(quantities: tuple[dict[str, Any], ...]) -> None:
    # _quantity keeps each checked, converted Quantity of a patient; every lookup must give what a fresh
    # conversion gives (value with its sign and type, comparator) or raise the same error.
    ext, row = _extractor(), next(r for r in load_tables().concepts.rows if r.kind == "quantity")
    for q in quantities:
        cached_row = msgspec.structs.replace(row, unit="Cel" if "Cel" in str(q) or "degF" in str(q) else "%")
        try:
            want: Any = ext.values._convert(q, cached_row, "p", _AT)
        except BadInput as exc:
            want = str(exc)
        try:
            got: Any = ext.values.quantity(q, cached_row, "p", _AT)
        except BadInput as exc:
            got = str(exc)
        assert got == want and repr(got) == repr(want)


@pytest.mark.parametrize(("a", "b"), [
    pytest.param("2024-03-01T10:00:00-05:00", "2024-03-02T07:30:00-05:00", id="same-offset"),
    pytest.param("2024-03-01T10:00:00Z", "2024-03-01T11:00:00+00:00", id="utc-spellings"),
    pytest.param("2024-03-01T10:00:00+05:30", "2024-03-01T10:00:00.250+05:30", id="fractions"),
])
def test_parsed_times_share_one_tzinfo_per_offset(a: str, b: str) -> None:
    # Sorting and comparing readings compares fields only when the tzinfo objects are the same
    # (timeparse._ZONES); the values and their isoformat must be what fromisoformat gives.
    from cart_fhir.ingest.timeparse import parse_moment

    ma, mb = parse_moment(a, _TZ), parse_moment(b, _TZ)
    assert ma.at.tzinfo is mb.at.tzinfo
    for m, s in ((ma, a), (mb, b)):
        assert m.at == datetime.fromisoformat(s)
        assert m.at.isoformat() == datetime.fromisoformat(s).isoformat()


# ---- grader fast paths (issue 18, graders round) ------------------------------------------------------

def _cumulative_by_day(below: list[bool], last: int, stable: int) -> int:
    """ICAHT decision 11 as it was written before the run-by-run version: one step per day."""
    n, i, seen = 0, 0, False
    while i < len(below):
        if below[i]:
            n, seen, i = n + (i <= last), True, i + 1
            continue
        j = i
        while j < len(below) and not below[j]:
            j += 1
        if seen and j < len(below) and j - i < stable:
            n += sum(1 for d in range(i, j) if d <= last)
        i = j
    return n


@pytest.mark.parametrize("seed", range(5))
def test_icaht_cumulative_runs_equal_day_steps(seed: int) -> None:
    # series.cumulative walks runs of equal days (groupby); it must count what the day-by-day walk counts.
    import random

    from cart_fhir.grading.icaht.series import cumulative

    rnd = random.Random(seed)
    for _ in range(300):
        below = [rnd.random() < rnd.choice((0.1, 0.5, 0.9)) for _ in range(rnd.randint(0, 45))]
        last, stable = rnd.randint(0, 40), rnd.randint(1, 4)
        assert cumulative(below, last, stable) == _cumulative_by_day(below, last, stable)


@pytest.mark.parametrize("values", [
    pytest.param(((499.9999999999, None),), id="one-float-noise"),
    pytest.param(((500.0, None), (1200.0, None)), id="two-plain"),
    pytest.param(((1200.0, None), (100.0, "<")), id="plain-and-bound"),
    pytest.param(((600.0, ">"),), id="bound-above"),
    pytest.param(((500.0000004, None), (100.0000001, None)), id="rounded-at-1e-6"),
])
def test_icaht_day_anc_plain_equals_each_reading(values: tuple[tuple[float, Any], ...]) -> None:
    # A day's ANC without bounds answers at_most() from its lowest value; it must agree with asking each
    # reading (at 1e-6 precision), at every threshold the table uses and at the values themselves.
    from cart_fhir.grading.icaht.series import _day_anc, at_most
    from cart_fhir.model import Quantity

    readings = [Reading("anc", _moment(_T0), Quantity(v, c), f"Observation/a{i}") for i, (v, c) in enumerate(values)]
    day = _day_anc(readings)
    for t in (100, 500, 1000, 1200, *(v for v, _ in values)):
        hits = [at_most(r, t) for r in readings]
        want = True if any(hits) else None if None in hits else False
        assert day.at_most(t) is want


def test_crs_fixed_device_ranges_equal_device_range() -> None:
    # The grader works out once the range of each device graded without its flow; it must be what
    # _device_range gives for that device at any flow (or none).
    from cart_fhir.grading.crs.hypoxia import _device_range, fixed_ranges
    from cart_fhir.model import Quantity

    devices = {d.device: d for d in load_tables().crs.oxygen.devices}
    fixed = fixed_ranges(devices)
    assert fixed and set(fixed) < set(devices)  # some devices depend on the flow
    for name, got in fixed.items():
        for flow in (None, Quantity(1.0), Quantity(6.0), Quantity(15.0), Quantity(6.0, "<")):
            assert got == _device_range(devices[name], flow, 6.0)


def test_coverage_seen_from_the_index_equals_scan() -> None:
    # CoverageGate.seen reads the course's concept index; it must find the concepts a scan of every
    # reading in the window finds (pre-infusion readings of day 0 included).
    from cart_fhir.pipeline import Engine

    hours = [-30, -2, 1, 5, 37, 100, 300, 400]
    concepts = ("body-temperature", "spo2", "anc", "crp")
    readings = [Reading(concepts[i % 4], _moment(_T0 + timedelta(hours=h)), 1, f"Observation/o{i}")
                for i, h in enumerate(hours)]
    patient = PatientData(key="Patient/p", id="p", reference={"reference": "Patient/p"}, birth_date=None,
                          readings=readings,
                          infusions=[Infusion(ref="MedicationAdministration/i", when=_moment(_T0), product="x")])
    (course,), _ = courses(patient)
    gate = Engine(strict=False).coverage
    lo, hi = gate.from_day, gate.to_day
    scan = {r.concept for day, r in (*course.readings, *course.pre_readings) if lo <= day <= hi}
    assert gate.seen(course) == frozenset(scan) and scan
