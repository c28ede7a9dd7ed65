"""The grading run: input items -> patients -> courses -> daily grades and episodes -> output Bundle."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .errors import BadInput, InputErrors, Location
from .grading.crs import CrsGrader
from .grading.episodes import episodes
from .grading.icans import IcansGrader
from .grading.result import DayGrade, Episode, Toxicity
from .ingest.codes import Terminology
from .ingest.extract import Extractor
from .ingest.index import build_index
from .ingest.read import Item
from .ingest.units import UnitConverter
from .model import PatientData
from .output.codes import OutputCodes
from .output.resources import Writer, Written
from .report import RunReport
from .tables import Tables, load_tables
from .timeline import Course, courses

BundleType = Literal["collection", "transaction"]


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The run builds millions of small, acyclic dicts that all stay alive until it ends: Python's cyclic
    collector would re-scan them again and again (measured: a third of the run time on a 1,000-patient
    cohort, benchmarks/README.md). Reference counting still frees everything; the collector is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Suspect:
    ref: str
    assessment: str
    rule: str


@dataclass(slots=True)
class CourseResult:
    course: Course
    days: dict[Toxicity, list[DayGrade]] = field(default_factory=dict)
    episodes: dict[Toxicity, list[Episode]] = field(default_factory=dict)


@dataclass(slots=True)
class PatientResult:
    patient: PatientData
    courses: list[CourseResult]


@dataclass(slots=True)
class RunResult:
    patients: list[PatientResult]
    report: RunReport


class Engine:
    """Configured once (tables, ConceptMaps); grades any number of inputs."""

    def __init__(self, tables: Tables | None = None, concept_maps: Iterable[tuple[str, dict[str, Any]]] = (),
                 strict: bool = True) -> None:
        self.tables = tables or load_tables()
        self.terminology = Terminology(self.tables, concept_maps)
        self.units = UnitConverter({r.alias: r.ucum for r in self.tables.units.rows},
                                   {(c.from_, c.to): (c.scale, c.offset) for c in self.tables.units.conversions})
        self.crs = CrsGrader(self.tables.crs)
        self.icans = IcansGrader(self.tables.icans)
        self.codes = OutputCodes(self.tables)
        self.strict = strict

    # ---- grading -----------------------------------------------------------------------------

    def grade(self, items: Iterable[Item]) -> RunResult:
        """Grade every patient in the input. Strict mode raises InputErrors on any bad input."""
        with _no_cyclic_gc():
            return self._grade(items)

    def _grade(self, items: Iterable[Item]) -> RunResult:
        report = RunReport()
        idx = build_index(items, report)
        extractor = Extractor(self.terminology, self.units, report)
        results: list[PatientResult] = []
        for pkey in idx.by_patient:
            report.patients += 1
            try:
                data = extractor.patient(idx, pkey)
            except BadInput as err:
                report.error(err)
                continue
            results.append(self.grade_patient(data, report))
        medications = [k for k, e in idx.by_key.items() if e.resource["resourceType"] == "Medication"]
        used = sum(1 for k in medications if k in extractor.medications_used)
        report.resources_used += used
        if len(medications) > used:
            report.ignored["Medication (not referenced)"] += len(medications) - used
        if self.strict and report.errors:
            raise InputErrors([BadInput(i.message, i.location) for i in report.errors])
        return RunResult(results, report)

    def grade_patient(self, data: PatientData, report: RunReport | None = None) -> PatientResult:
        """Pure: one patient's facts in, their courses with daily grades and episodes out."""
        course_list, before = courses(data)
        if report is not None:
            if not course_list:
                report.warn("no CAR-T infusion found: patient not graded", Location(data.source or data.key))
            else:
                report.patients_graded += 1
            if before:
                report.ignored["events before day 0"] += before
        out = []
        for course in course_list:
            cr = CourseResult(course)
            cr.days[Toxicity.CRS] = self.crs.grade(course)
            cr.days[Toxicity.ICANS] = self.icans.grade(course)
            for tox, days in cr.days.items():
                cr.episodes[tox] = episodes(tox, days)
            out.append(cr)
        return PatientResult(data, out)

    # ---- output ------------------------------------------------------------------------------

    def causality(self, toxicity: str, onset_day: int) -> tuple[str, str]:
        """(WHO-UMC causality code, rule text) for the CAR-T infusion, from mappings/attribution.yaml."""
        table = self.tables.attribution
        for row in table.rows:
            if row.toxicity == toxicity and row.from_day <= onset_day and (row.to_day is None or onset_day <= row.to_day):
                window = f"days {row.from_day}-{row.to_day}" if row.to_day is not None else f"day {row.from_day} on"
                return row.assessment, (f"cart-fhir {table.table} v{table.version}: {toxicity} onset on day "
                                        f"{onset_day}, window {window} -> {row.assessment}")
        return "Unassessable-Unclassifiable", f"cart-fhir {table.table} v{table.version}: no window matched"

    def resources(self, result: RunResult, recorded: datetime) -> list[Written]:
        """Every resource of the run, in a stable order: Device, then per patient grades, episodes, AEs, Provenance."""
        writer = Writer(self.codes, self.tables.versions(), recorded)
        out: list[Written] = [writer.device]
        for pr in result.patients:
            mine: list[Written] = []
            sources: list[str] = []
            for cr in pr.courses:
                sources.append(cr.course.infusion.ref)
                for tox in (Toxicity.CRS, Toxicity.ICANS):
                    daily = {dg.day: writer.observation(cr.course, dg) for dg in cr.days[tox]}
                    mine.extend(daily.values())
                    for dg in cr.days[tox]:
                        sources.extend(dg.evidence)
                        sources.extend(dg.supporting)
                    for ep in cr.episodes[tox]:
                        cond = writer.condition(cr.course, ep, daily)
                        assessment, rule = self.causality(tox.value, ep.onset_day)
                        ae = writer.adverse_event(cr.course, ep, cond,
                                                  [_Suspect(cr.course.infusion.ref, assessment, rule)])
                        mine.extend((cond, ae))
            if not mine:
                continue
            result.report.grades_written += sum(1 for w in mine if w.resource["resourceType"] == "Observation")
            mine.append(writer.provenance(pr.patient.key, mine, list(dict.fromkeys(sources))))
            out.extend(mine)
        result.report.resources_written = len(out) if len(out) > 1 else 0
        return out if len(out) > 1 else []

    @staticmethod
    def bundle(written: list[Written], bundle_type: BundleType = "collection") -> dict[str, Any]:
        """A collection Bundle, or a transaction of conditional updates keyed on the business identifiers."""
        entries = []
        for w in written:
            entry: dict[str, Any] = {"fullUrl": w.full_url, "resource": w.resource}
            if bundle_type == "transaction":
                entry["request"] = {"method": "PUT", "url": w.condition}
            entries.append(entry)
        return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}

