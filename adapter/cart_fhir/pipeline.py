"""The grading run: input items -> patients -> courses -> daily grades and episodes -> output Bundle."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .conformance.tables_check import check_shipped
from .errors import BadInput, InputErrors, Location
from .grading.crs import CrsGrader
from .grading.episodes import episodes
from .grading.icans import IcansGrader
from .grading.attribution import Attributor
from .grading.hematotox import HematotoxScorer
from .grading.icaht import IcahtGrader
from .grading.iechs import IecHsGrader
from .grading.infections import InfectionGrader
from .grading.neuro_other import NeuroOtherGrader
from .grading.result import Assessment, DayGrade, Episode, Event, State, Toxicity
from .grading.treatments import TreatmentAnalyzer, TreatmentResponse
from .ingest.codes import Terminology
from .ingest.extract import Extractor
from .ingest.index import build_index
from .ingest.read import Item
from .ingest.units import UnitConverter
from .model import PatientData
from .output.codes import OutputCodes
from .output.resources import PatientResources, Writer, Written
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
        # Everything allocated meanwhile sits in the youngest generation: the first collections after
        # re-enabling would scan all of it (measured: ~1.0 s of a 7.3 s pass at 100 patients, in the
        # Bundle step). freeze() + unfreeze() moves every tracked object to the oldest generation without
        # a scan; a later full collection still finds any cycle, so nothing leaks.
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


@dataclass(slots=True)
class CourseResult:
    course: Course
    days: dict[Toxicity, list[DayGrade]] = field(default_factory=dict)
    episodes: dict[Toxicity, list[Episode]] = field(default_factory=dict)
    treatments: dict[Toxicity, list[TreatmentResponse]] = field(default_factory=dict)  # per CRS/ICANS episode
    events: list[Event] = field(default_factory=list)  # IEC-HS, ICAHT, infections, other neurotoxicity
    assessments: list[Assessment] = field(default_factory=list)  # not tied to an event (not assessable ones)
    hematotox: Assessment | None = None


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
        check_shipped()  # one source of truth: the tables' project codes are those the profiles publish
        self.terminology = Terminology(self.tables, concept_maps)
        self.units = UnitConverter({r.alias: r.ucum for r in self.tables.units.rows},
                                   {(c.from_, c.to): (c.scale, c.offset) for c in self.tables.units.conversions})
        self.crs = CrsGrader(self.tables.crs)
        self.icans = IcansGrader(self.tables.icans)
        # The graders beyond CRS/ICANS bring their own criteria tables, parsed and checked here, at start-up.
        self.treatments = TreatmentAnalyzer()
        self.iechs = IecHsGrader()
        self.icaht = IcahtGrader()
        self.hematotox = HematotoxScorer()
        self.infections = InfectionGrader()
        self.neuro_other = NeuroOtherGrader()
        self.attributor = Attributor()
        graders = (self.treatments, self.iechs, self.icaht, self.hematotox, self.infections, self.neuro_other,
                   self.attributor)
        # Every criteria table and its version: recorded on the engine Device (output-contract section 4).
        self.versions = dict(self.tables.versions())
        self.versions.update({g.t.table: g.t.version for g in graders})
        self.codes = OutputCodes(self.tables)
        self.strict = strict

    # ---- grading -----------------------------------------------------------------------------

    def grade(self, items: Iterable[Item], strict: bool | None = None) -> RunResult:
        """Grade every patient in the input. Strict mode (the engine's, unless given) raises InputErrors on
        any bad input."""
        with _no_cyclic_gc():
            return self._grade(items, self.strict if strict is None else strict)

    def _grade(self, items: Iterable[Item], strict: bool) -> RunResult:
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
        if strict and report.errors:
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
        return PatientResult(data, [self._grade_course(course, report) for course in course_list])

    def _grade_course(self, course: Course, report: RunReport | None) -> CourseResult:
        """Every grader over one infusion course: CRS and ICANS day by day, then the toxicities that read
        their episodes (treatments, IEC-HS, other neurotoxicity), then the independent ones."""
        cr = CourseResult(course)
        cr.days[Toxicity.CRS] = self.crs.grade(course)
        cr.days[Toxicity.ICANS] = self.icans.grade(course)
        for tox, days in cr.days.items():
            cr.episodes[tox] = episodes(tox, days)
        other = {Toxicity.CRS: Toxicity.ICANS, Toxicity.ICANS: Toxicity.CRS}
        for tox, days in cr.days.items():
            cr.treatments[tox] = self.treatments.analyze(course, tox, days, cr.episodes[tox], cr.episodes[other[tox]])
        crs_days, crs_eps = cr.days[Toxicity.CRS], cr.episodes[Toxicity.CRS]
        icans_days, icans_eps = cr.days[Toxicity.ICANS], cr.episodes[Toxicity.ICANS]
        for found in (self.iechs.grade(course, crs_days, crs_eps), self.icaht.grade(course),
                      self.infections.grade(course), self.neuro_other.grade(course, icans_days, icans_eps)):
            cr.events.extend(found.events)
            tied = {id(ev.assessment) for ev in found.events if ev.assessment is not None}
            cr.assessments.extend(a for a in found.assessments if id(a) not in tied)
        cr.hematotox = self.hematotox.score(course)
        if report is not None:
            self._report_unverified(cr, report)
        return cr

    def _report_unverified(self, cr: CourseResult, report: RunReport) -> None:
        """Decision 10: the run report names the unverified criteria rows a result used."""
        for responses in cr.treatments.values():
            report.unverified_rows.update(r for tr in responses for r in tr.unverified_rows)
        if cr.hematotox is not None and cr.hematotox.state != State.NOT_ASSESSABLE:
            report.unverified_rows.update(self.hematotox.unverified_rows(cr.hematotox))
        for ev in cr.events:
            if ev.toxicity in (Toxicity.ICAHT_EARLY, Toxicity.ICAHT_LATE) and ev.assessment is not None:
                report.unverified_rows.update(self.icaht.unverified_rows(ev.assessment))
            elif ev.toxicity == Toxicity.IEC_HS:
                report.unverified_rows.add(f"{self.iechs.t.table}:screen-and-grade")

    # ---- output ------------------------------------------------------------------------------

    def resources(self, result: RunResult, recorded: datetime) -> list[Written]:
        """Every resource of the run, in a stable order: Device, then per patient grades, episodes, AEs, Provenance."""
        device, groups = self.resources_by_patient(result, recorded)
        out = [w for g in groups for w in g.resources]
        return [device, *out] if out else []

    def resources_by_patient(self, result: RunResult, recorded: datetime) -> tuple[Written, list[PatientResources]]:
        """The engine Device, and each graded patient's resources (their Provenance last), for per-patient
        writes to a server: referenced resources always come before the resources that refer to them."""
        with _no_cyclic_gc():
            return self._resources(result, recorded)

    def _resources(self, result: RunResult, recorded: datetime) -> tuple[Written, list[PatientResources]]:
        writer = Writer(self.codes, self.versions, recorded)
        groups: list[PatientResources] = []
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
                    for ep, tr in zip(cr.episodes[tox], cr.treatments[tox], strict=True):
                        cond = writer.condition(cr.course, ep, daily)
                        suspects = self.attributor.suspects(cr.course, tox, ep.onset_day, ep.onset,
                                                            ep.max_day.evidence)
                        ae = writer.adverse_event(cr.course, ep, cond, suspects)
                        response = writer.assessment(cr.course, tr.assessment, f"{tox.value}-{ep.number}", cond)
                        mine.extend((cond, ae, response))
                        sources.extend(tr.treatment_refs)
                mine.extend(self._other_resources(writer, cr, sources))
            if not mine:
                continue
            result.report.grades_written += sum(len(days) for cr in pr.courses for days in cr.days.values())
            mine.append(writer.provenance(pr.patient.key, mine, list(dict.fromkeys(sources))))
            groups.append(PatientResources(pr.patient.key, mine))
        count = sum(len(g.resources) for g in groups)
        result.report.resources_written = count + 1 if count else 0
        return writer.device, groups

    def _other_resources(self, writer: Writer, cr: CourseResult, sources: list[str]) -> list[Written]:
        """Observations, Conditions and AdverseEvents of the toxicities beyond CRS/ICANS, and the score."""
        out: list[Written] = []
        course = cr.course
        if cr.hematotox is not None:
            out.append(writer.assessment(course, cr.hematotox, "car-hematotox"))
            sources.extend(cr.hematotox.evidence)
        for i, a in enumerate(cr.assessments):
            out.append(writer.assessment(course, a, f"{a.code}-{i}"))
            sources.extend(a.evidence)
        for ev in cr.events:
            obs = writer.assessment(course, ev.assessment, ev.key) if ev.assessment is not None else None
            if obs is not None:
                out.append(obs)
                sources.extend(ev.assessment.evidence)  # type: ignore[union-attr]
            if ev.condition_ref is not None:
                condition = {"reference": ev.condition_ref}
            else:
                own = writer.event_condition(course, ev, obs)
                out.append(own)
                condition = {"reference": own.full_url}
            suspects = self.attributor.suspects(course, ev.toxicity, ev.onset_day, ev.onset, ev.evidence)
            out.append(writer.event_adverse_event(course, ev, condition, suspects))
            sources.extend(ev.evidence)
        return out

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

