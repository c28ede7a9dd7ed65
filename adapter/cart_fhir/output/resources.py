"""Builders for the daily grade Observation, episode Condition, AdverseEvent, Provenance and engine Device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from .. import __version__
from ..constants import (
    AE_CAUSALITY_ASSESS,
    AE_OUTCOME,
    AE_SERIOUSNESS,
    AE_SEVERITY,
    COND_CLINICAL,
    CS_GRADE_QUALIFIER,
    CS_RISK,
    DATA_ABSENT,
    EXT_AE_GRADE,
    EXT_RELATIVE_DATETIME,
    EXT_SUPPORTING_INFO,
    ID_AE,
    ID_DEVICE,
    ID_EPISODE,
    ID_GRADE,
    ID_RUN,
    PROFILE_AE,
    PROFILE_EPISODE,
    PROFILE_GRADE,
    PROFILE_PROVENANCE,
    PROV_PARTICIPANT,
    V3_DATA_OPERATION,
)
from ..grading.result import Assessment, Component, DayGrade, Episode, Event, State
from ..model import Moment
from ..timeline import Course
from .codes import coding
from .ids import full_url, hash_text, stable_hash
from .shared import SharedDict, SharedList, shared
from .templates import Fixed

SEVERITY = {1: "mild", 2: "moderate"}  # grade >= 3: severe (output-contract.md section 3)
CAUSALITY_DISPLAY = {"Certain": "Certain", "Probably-Likely": "Probably/Likely", "Possible": "Possible",
                     "Unlikely": "Unlikely", "Conditional-Classified": "Conditional/Classified",
                     "Unassessable-Unclassifiable": "Unassessable/Unclassifiable"}


class SuspectLike(Protocol):
    """A suspect entity with its causality (cart_fhir.grading.attribution.Suspect, a frozen dataclass)."""

    @property
    def ref(self) -> str: ...
    @property
    def assessment(self) -> str: ...
    @property
    def rule(self) -> str: ...


def iso(dt: datetime) -> str:
    """FHIR dateTime with the offset kept (seconds precision unless the input had fractions)."""
    return dt.isoformat()


@dataclass(frozen=True, slots=True)
class Written:
    """A resource to write, with its fullUrl and the conditional-update key (search URL)."""

    full_url: str
    resource: dict[str, Any]
    condition: str  # e.g. "Observation?identifier=system|value"


@dataclass(slots=True)
class PatientResources:
    """One patient's resources to write, in order (the writer's unit: one lock, one or more transactions).

    Here beside Written, not in the engine, so the client layer (remote/write.py) needs nothing above it."""

    patient_key: str  # "Patient/<id>" as the input names the patient
    resources: list[Written]


def ref(target: Written) -> dict[str, str]:
    return {"reference": target.full_url}


def _input_ref(key: str) -> dict[str, str]:
    return {"reference": key}


_RELATIONSHIP = shared({"url": "relationship", "valueCode": "after-start"})  # of every relative-day extension
# Input references that are not Observations: derivedFrom may only point at Observations.
_NOT_OBSERVATION = ("Condition/", "MedicationAdministration/", "MedicationStatement/", "Procedure/")


class _CourseParts:
    """What every resource of one course repeats, built once per course and shared read-only
    (output/shared.py): the subject, the relative-day extension and daily period of each day, and the
    start of the identifier hashes."""

    __slots__ = ("course", "fixed", "subject", "_key", "_target", "_days", "_periods")

    def __init__(self, course: Course, fixed: Fixed) -> None:
        self.course = course
        self.fixed = fixed
        self.subject = shared(dict(course.patient.reference))
        self._key = f"{course.patient.key}\x1f{course.infusion.ref}\x1f"  # stable_hash's first two parts
        inf = course.infusion.ref
        self._target = (  # the relative-day extension's parts naming the infusion
            shared({"url": "target", "valueReference": _input_ref(inf)}),
            shared({"url": "targetPath", "valueString": "performed" if inf.startswith("Procedure/") else "effective"}),
            _RELATIONSHIP)
        self._days: dict[int, SharedDict] = {}
        self._periods: dict[tuple[int, datetime, datetime], SharedDict] = {}

    def hash(self, *parts: object) -> str:
        """stable_hash(patient key, infusion ref, *parts)."""
        return hash_text(self._key + "\x1f".join(str(p) for p in parts))

    def relative_day(self, day: int) -> SharedDict:
        """cqf-relativeDateTime: day N after the start of the CAR-T infusion (output-contract.md section 1)."""
        hit = self._days.get(day)
        if hit is None:
            hit = self._days[day] = SharedDict({"url": EXT_RELATIVE_DATETIME,
                                                "extension": SharedList([*self._target, self.fixed.offset(day)])})
        return hit

    def day_period(self, day: int, window: tuple[datetime, datetime]) -> SharedDict:
        """The effectivePeriod of a daily grade (its CRS and ICANS Observations share it)."""
        start, end = window
        key = (day, start, end)
        hit = self._periods.get(key)
        if hit is None:
            hit = self._periods[key] = SharedDict({
                "extension": SharedList((self.relative_day(day),)),
                "start": iso(start),
                "end": iso(end - timedelta(seconds=1)),  # Period.end is inclusive: the day's last second
            })
        return hit


class Writer:
    """Turns one course's grades and episodes into resources; pure apart from the run time it is given.

    The fixed parts come from the engine's `Fixed` (output/templates.py) and each course's from a
    `_CourseParts`: both are shared, read-only, by the resources that carry them (output/shared.py)."""

    def __init__(self, fixed: Fixed, versions: dict[str, int], recorded: datetime) -> None:
        self.fixed = fixed
        self.codes = fixed.codes
        self.versions = versions
        self.recorded = recorded
        self.device = self._device()
        self._device_ref = shared(ref(self.device))
        self._parts: _CourseParts | None = None
        self._methods: dict[str, SharedDict] = {}  # of each daily-graded toxicity
        self._recorded = iso(recorded)
        # stable_hash(patient, "grading-run", __version__, versions): the last two parts, as str() spells them
        self._run_key = f"{__version__}\x1f{sorted(versions.items())}"
        self._activity = fixed.concept(V3_DATA_OPERATION, "CREATE", "create")
        self._agent = shared([{"type": {"coding": [coding(PROV_PARTICIPANT, "assembler", "Assembler")]},
                               "who": ref(self.device)}])

    def _of(self, course: Course) -> _CourseParts:
        parts = self._parts
        if parts is None or parts.course is not course:
            parts = self._parts = _CourseParts(course, self.fixed)
        return parts

    # ---- engine Device -----------------------------------------------------------------------

    def _device(self) -> Written:
        versions = [{"type": {"text": "cart-fhir"}, "value": __version__}]
        versions += [{"type": {"text": table}, "value": str(v)} for table, v in sorted(self.versions.items())]
        res = {
            "resourceType": "Device",
            "identifier": [{"system": ID_DEVICE, "value": "cart-fhir"}],
            "status": "active",
            "deviceName": [{"name": "cart-fhir", "type": "manufacturer-name"}],
            "type": {"text": "CAR-T toxicity grading engine (software)"},
            "version": versions,
        }
        return Written(full_url(ID_DEVICE, "cart-fhir"), res, f"Device?identifier={ID_DEVICE}|cart-fhir")

    # ---- daily grade Observation --------------------------------------------------------------

    def _method(self, tox: str) -> SharedDict:
        """The method of a daily grade: the criteria, the engine version and the criteria table's version."""
        hit = self._methods.get(tox)
        if hit is None:
            _, _, criteria = self.codes.scale(tox)
            table = "astct-crs-2019" if tox == "crs" else "astct-icans-2019"
            hit = self._methods[tox] = self.fixed.method(f"{criteria}; cart-fhir {__version__}, criteria table "
                                                         f"{table} v{self.versions.get(table, 0)}")
        return hit

    def observation(self, course: Course, dg: DayGrade) -> Written:
        tox = dg.toxicity.value
        scale, scale_display, _ = self.codes.scale(tox)
        parts = self._of(course)
        value_id = parts.hash(tox, scale, dg.day)
        value: dict[str, Any]
        if dg.state == State.NOT_ASSESSABLE:
            reason = "not-performed" if any(m.startswith(("body temperature", "ice", "capd"))
                                            for m in dg.missing) else "unknown"
            value = {"dataAbsentReason": {"coding": [coding(DATA_ABSENT, reason, "Not Performed" if reason ==
                                                            "not-performed" else "Unknown")],
                                          "text": "Not assessable: missing " + "; ".join(dg.missing)}}
        else:
            value = {"valueInteger": dg.grade}
            if dg.state == State.AT_LEAST:
                value["interpretation"] = [{"coding": [coding(CS_GRADE_QUALIFIER, "at-least", "At least this grade")],
                                            "text": f"At least grade {dg.grade}: missing " + "; ".join(dg.missing)}]
        method = self._method(tox)
        res = self._observation(parts, value_id, scale, scale_display, f"{scale_display}, day {dg.day}", None,
                                {"effectivePeriod": parts.day_period(dg.day, dg.window)}, value, dg.reasons,
                                dg.flags, dg.evidence, dg.supporting, method, dg.components)
        return Written(full_url(ID_GRADE, value_id), res, f"Observation?identifier={ID_GRADE}|{value_id}")

    def _observation(self, parts: _CourseParts, value_id: str, code: str, display: str | None, text: str,
                     focus: Written | None, timing: dict[str, Any], value: dict[str, Any], reasons: Sequence[str],
                     flags: Sequence[str], evidence: Sequence[str], supporting: Sequence[str], method: SharedDict,
                     components: Sequence[Component]) -> dict[str, Any]:
        """A grade Observation (output-contract.md section 1), its elements in a readable order (element
        order does not matter in FHIR JSON). Input Observations that decided the grade go in derivedFrom;
        Conditions and the medications used go in the workflow-supportingInfo extension (derivedFrom may
        only point at Observations)."""
        res: dict[str, Any] = {"resourceType": "Observation", "meta": self.fixed.meta[PROFILE_GRADE]}
        other = [e for e in evidence if e.startswith(_NOT_OBSERVATION)]
        other.extend(supporting)
        if other:
            res["extension"] = [{"url": EXT_SUPPORTING_INFO, "valueReference": _input_ref(e)}
                                for e in dict.fromkeys(other)]
        res["identifier"] = [{"system": ID_GRADE, "value": value_id}]
        res["status"] = "preliminary"
        res["category"] = self.fixed.survey
        res["code"] = {"coding": self.fixed.toxicity_coding(code, display), "text": text}
        res["subject"] = parts.subject
        if focus is not None:  # e.g. a treatment-response summary is about its episode Condition
            res["focus"] = [ref(focus)]
        res.update(timing)
        res.update(value)
        notes = list(reasons) + (["review flags: " + ", ".join(flags)] if flags else [])
        if notes:
            res["note"] = [{"text": "; ".join(notes)}]
        res["method"] = method
        res["device"] = self._device_ref
        observations = [e for e in evidence if not e.startswith(_NOT_OBSERVATION)]
        if observations:
            res["derivedFrom"] = [_input_ref(e) for e in dict.fromkeys(observations)]
        if components:
            component = self.fixed.component
            res["component"] = [component(c) for c in components]
        return res

    # ---- episode Condition and AdverseEvent ---------------------------------------------------

    def _episode_hash(self, course: Course, ep: Episode, what: str) -> str:
        tox = ep.toxicity.value
        return self._of(course).hash(tox, self.codes.scale(tox)[0], ep.onset_day, what)

    def condition(self, course: Course, ep: Episode, daily: dict[int, Written]) -> Written:
        """The Condition of a CRS or ICANS episode: stage = maximum grade and the day that reached it."""
        value_id = self._episode_hash(course, ep, "episode")
        note = (f"Maximum grade proven only as at least {ep.max_grade}: " + "; ".join(ep.max_day.missing)
                if ep.max_is_lower_bound else None)
        return self._condition(course, ep.toxicity.value, value_id, ep.onset, ep.abatement, ep.max_grade, None,
                               daily[ep.max_day.day], [daily[d.day] for d in ep.days if d.day in daily], note)

    def _condition(self, course: Course, tox: str, value_id: str, onset: datetime, abatement: datetime | None,
                   grade: int | None, term: tuple[str, str, str] | None, assessment: Written | None,
                   evidence: list[Written], note: str | None = None) -> Written:
        fx = self.fixed
        scale, scale_display, _ = self.codes.scale(tox)
        resolved = abatement is not None
        res: dict[str, Any] = {
            "resourceType": "Condition",
            "meta": fx.meta[PROFILE_EPISODE],
            "identifier": [{"system": ID_EPISODE, "value": value_id}],
            "clinicalStatus": (fx.concept(COND_CLINICAL, "resolved", "Resolved") if resolved
                               else fx.concept(COND_CLINICAL, "active", "Active")),
            "verificationStatus": fx.provisional,
            "category": fx.encounter_diagnosis,
            "code": {"coding": fx.toxicity_codings(tox, grade, term), "text": self.codes.display(tox)},
            "subject": self._of(course).subject,
            "onsetDateTime": iso(onset),
        }
        if abatement is not None:
            res["abatementDateTime"] = iso(abatement)
        if grade is not None:
            stage: dict[str, Any] = {"summary": fx.grade_concept(grade)}
            if assessment is not None:
                stage["assessment"] = [ref(assessment)]
            stage["type"] = {"coding": fx.toxicity_coding(scale, scale_display)}
            res["stage"] = [stage]
        if evidence:
            res["evidence"] = [{"detail": [ref(w) for w in evidence]}]
        if note:
            res["note"] = [{"text": note}]
        return Written(full_url(ID_EPISODE, value_id), res, f"Condition?identifier={ID_EPISODE}|{value_id}")

    def adverse_event(self, course: Course, ep: Episode, condition: Written,
                      suspects: Sequence[SuspectLike]) -> Written:
        """The AdverseEvent of a CRS or ICANS episode."""
        tox = ep.toxicity.value
        value_id = self._episode_hash(course, ep, "adverse-event")
        return self._adverse_event(course, tox, value_id, ep.max_grade, ep.onset, ep.abatement is not None,
                                   ref(condition), self.fixed.toxicity_codings(tox, ep.max_grade), suspects)

    def event_adverse_event(self, course: Course, ev: Event, condition: dict[str, str],
                            suspects: Sequence[SuspectLike]) -> Written:
        """The AdverseEvent of an event beyond CRS/ICANS (IEC-HS, ICAHT, infection, neurological event)."""
        tox = ev.toxicity.value
        value_id = self._of(course).hash(tox, ev.key, "adverse-event")
        return self._adverse_event(course, tox, value_id, ev.max_grade, ev.onset, ev.abatement is not None,
                                   condition, self.fixed.toxicity_codings(tox, ev.max_grade, ev.term), suspects,
                                   ev.serious)

    def _adverse_event(self, course: Course, tox: str, value_id: str, grade: int | None, onset: datetime,
                       resolved: bool, condition: dict[str, str], codings: list[dict[str, Any]],
                       suspects: Sequence[SuspectLike], serious: bool | None = None) -> Written:
        fx = self.fixed
        res: dict[str, Any] = {
            "resourceType": "AdverseEvent",
            "meta": fx.meta[PROFILE_AE],
        }
        if grade is not None:
            res["extension"] = [{"url": EXT_AE_GRADE, "valueCodeableConcept": fx.grade_concept(grade)}]
        outcome = "fatal" if grade == 5 else ("resolved" if resolved else "ongoing")
        res.update({
            "identifier": {"system": ID_AE, "value": value_id},
            "actuality": "actual",
            "event": {"coding": codings, "text": self.codes.display(tox)},
            "subject": self._of(course).subject,
            "date": iso(onset),
            "recordedDate": self._recorded,
            "resultingCondition": [condition],
        })
        if grade is not None:
            sev = SEVERITY.get(grade, "severe")
            res["severity"] = fx.concept(AE_SEVERITY, sev, sev.capitalize())
            serious = grade >= 3 if serious is None else serious
        if serious is not None:  # an ungraded event may still be serious (a new malignancy)
            res["seriousness"] = (fx.concept(AE_SERIOUSNESS, "serious", "Serious") if serious
                                  else fx.concept(AE_SERIOUSNESS, "non-serious", "Non-serious"))
        res["outcome"] = fx.concept(AE_OUTCOME, outcome, outcome.capitalize())
        res["contributor"] = [self._device_ref]
        res["suspectEntity"] = [{
            "instance": _input_ref(s.ref),
            "causality": [{
                "assessment": fx.concept(AE_CAUSALITY_ASSESS, s.assessment, CAUSALITY_DISPLAY[s.assessment]),
                "productRelatedness": s.rule,
                "method": fx.causality_method,
            }],
        } for s in suspects]
        return Written(full_url(ID_AE, value_id), res, f"AdverseEvent?identifier={ID_AE}|{value_id}")

    # ---- assessments and events beyond CRS/ICANS ------------------------------------------------

    def assessment(self, course: Course, a: Assessment, key: str, focus: Written | None = None) -> Written:
        """One Observation for an assessment that is not a daily grade (ICAHT, CAR-HEMATOTOX, IEC-HS,
        an infection's or neurological event's CTCAE grade, a treatment-response summary)."""
        parts = self._of(course)
        value_id = parts.hash(a.code, key)
        relative = parts.relative_day(course.day_of(Moment(a.start)))
        timing: dict[str, Any]
        if a.end is not None:
            timing = {"effectivePeriod": {"extension": [relative], "start": iso(a.start), "end": iso(a.end)}}
        else:
            timing = {"effectiveDateTime": iso(a.start), "_effectiveDateTime": {"extension": [relative]}}
        value: dict[str, Any] = {}
        if a.state == State.NOT_ASSESSABLE:
            value["dataAbsentReason"] = {"coding": [coding(DATA_ABSENT, "unknown", "Unknown")],
                                         "text": "Not assessable: missing " + ("; ".join(a.missing) or "data")}
        elif a.value is not None:
            value["valueInteger"] = a.value
        # else: a summary carried by its components alone (treatment-response), like a panel
        interp: list[dict[str, Any]] = []
        if a.state == State.AT_LEAST and a.value is not None:
            interp.append({"coding": [coding(CS_GRADE_QUALIFIER, "at-least", "At least this grade")],
                           "text": f"At least {a.value}: missing " + "; ".join(a.missing)})
        if a.interpretation:
            interp.append({"coding": [coding(CS_RISK, a.interpretation, f"{a.interpretation.capitalize()} risk")],
                           "text": f"{a.interpretation} risk"})
        if interp:
            value["interpretation"] = interp
        display = self.codes.assessment_display(a.code)
        method = self.fixed.method(f"cart-fhir {__version__}" + (f", criteria table {a.table}" if a.table else ""))
        res = self._observation(parts, value_id, a.code, display, display or a.code, focus, timing, value,
                                a.reasons, a.flags, a.evidence, a.supporting, method, a.components)
        return Written(full_url(ID_GRADE, value_id), res, f"Observation?identifier={ID_GRADE}|{value_id}")

    def event_condition(self, course: Course, ev: Event, assessment: Written | None) -> Written:
        """Our own Condition for an event no input Condition records (IEC-HS, ICAHT, a positive culture)."""
        value_id = self._of(course).hash(ev.toxicity.value, ev.key, "episode")
        return self._condition(course, ev.toxicity.value, value_id, ev.onset, ev.abatement, ev.max_grade, ev.term,
                               assessment, [assessment] if assessment is not None else [])

    # ---- Provenance ---------------------------------------------------------------------------

    def provenance(self, patient_key: str, targets: list[Written], sources: list[str]) -> Written:
        """One per patient per run. R4 Provenance has no identifier element: the run key is a meta.tag
        in the grading-run identifier system, and the conditional update searches on _tag."""
        value_id = stable_hash(patient_key, "grading-run", self._run_key)
        res: dict[str, Any] = {
            "resourceType": "Provenance",
            "meta": {"profile": [PROFILE_PROVENANCE], "tag": [{"system": ID_RUN, "code": value_id}]},
            "target": [ref(t) for t in targets],
            "recorded": self._recorded,
            "activity": self._activity,
            "agent": self._agent,
        }
        if sources:
            res["entity"] = [{"role": "source", "what": _input_ref(s)} for s in sources]
        return Written(full_url(ID_RUN, value_id), res, f"Provenance?_tag={ID_RUN}|{value_id}")
