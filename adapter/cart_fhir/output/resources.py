"""Builders for the daily grade Observation, episode Condition, AdverseEvent, Provenance and engine Device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from .. import __version__
from ..constants import (
    AE_CAUSALITY_ASSESS,
    AE_CAUSALITY_METHOD,
    AE_OUTCOME,
    AE_SERIOUSNESS,
    AE_SEVERITY,
    COND_CATEGORY,
    COND_CLINICAL,
    COND_VERIFICATION,
    CS_GRADE_QUALIFIER,
    CS_RISK,
    CS_TOXICITY,
    DATA_ABSENT,
    EXT_AE_GRADE,
    EXT_RELATIVE_DATETIME,
    EXT_SUPPORTING_INFO,
    ID_AE,
    ID_DEVICE,
    ID_EPISODE,
    ID_GRADE,
    ID_RUN,
    OBS_CATEGORY,
    PROFILE_AE,
    PROFILE_EPISODE,
    PROFILE_GRADE,
    PROFILE_PROVENANCE,
    PROV_PARTICIPANT,
    UCUM,
    V3_DATA_OPERATION,
    cs,
)
from ..grading.result import Assessment, Component, DayGrade, Episode, Event, State
from ..model import Moment
from ..timeline import Course
from .codes import ANSWER_SYSTEMS, OutputCodes, coding
from .ids import full_url, stable_hash

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


OBSERVATION_ORDER = ("resourceType", "meta", "extension", "identifier", "status", "category", "code", "subject",
                     "focus", "effectiveDateTime", "_effectiveDateTime", "effectivePeriod", "valueInteger",
                     "dataAbsentReason", "interpretation", "note", "method", "device", "derivedFrom", "component")

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


def _grade_header(course: Course, value_id: str, code: str, display: str | None, text: str) -> dict[str, Any]:
    """The elements every grade Observation starts with (output-contract.md section 1)."""
    return {
        "resourceType": "Observation",
        "meta": {"profile": [PROFILE_GRADE]},
        "identifier": [{"system": ID_GRADE, "value": value_id}],
        "status": "preliminary",
        "category": [{"coding": [coding(OBS_CATEGORY, "survey", "Survey")]}],
        "code": {"coding": [coding(CS_TOXICITY, code, display)], "text": text},
        "subject": dict(course.patient.reference),
    }


def _relative_day(course: Course, day: int) -> dict[str, Any]:
    """cqf-relativeDateTime: day N after the start of the CAR-T infusion (output-contract.md section 1)."""
    return {"url": EXT_RELATIVE_DATETIME, "extension": [
        {"url": "target", "valueReference": _input_ref(course.infusion.ref)},
        {"url": "targetPath", "valueString": "performed" if course.infusion.ref.startswith("Procedure/")
         else "effective"},
        {"url": "relationship", "valueCode": "after-start"},
        {"url": "offset", "valueDuration": {"value": day, "unit": "d", "system": UCUM, "code": "d"}}]}


class Writer:
    """Turns one course's grades and episodes into resources; pure apart from the run time it is given."""

    def __init__(self, codes: OutputCodes, versions: dict[str, int], recorded: datetime) -> None:
        self.codes = codes
        self.versions = versions
        self.recorded = recorded
        self.device = self._device()

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

    def observation(self, course: Course, dg: DayGrade) -> Written:
        tox = dg.toxicity.value
        scale, scale_display, criteria = self.codes.scale(tox)
        value_id = stable_hash(course.patient.key, course.infusion.ref, tox, scale, dg.day)
        table = "astct-crs-2019" if tox == "crs" else "astct-icans-2019"
        start, end = dg.window
        res = _grade_header(course, value_id, scale, scale_display, f"{scale_display}, day {dg.day}")
        res.update({
            "effectivePeriod": {
                "extension": [_relative_day(course, dg.day)],
                "start": iso(start),
                "end": iso(end - timedelta(seconds=1)),  # Period.end is inclusive: the day's last second
            },
        })
        if dg.state == State.NOT_ASSESSABLE:
            reason = "not-performed" if any(m.startswith(("body temperature", "ice", "capd"))
                                            for m in dg.missing) else "unknown"
            res["dataAbsentReason"] = {"coding": [coding(DATA_ABSENT, reason, "Not Performed" if reason ==
                                                         "not-performed" else "Unknown")],
                                       "text": "Not assessable: missing " + "; ".join(dg.missing)}
        else:
            res["valueInteger"] = dg.grade
            if dg.state == State.AT_LEAST:
                res["interpretation"] = [{"coding": [coding(CS_GRADE_QUALIFIER, "at-least",
                                                            "At least this grade")],
                                          "text": f"At least grade {dg.grade}: missing " + "; ".join(dg.missing)}]
        method = (f"{criteria}; cart-fhir {__version__}, criteria table {table} v{self.versions.get(table, 0)}")
        res = self._observation_tail(res, dg.reasons, dg.flags, dg.evidence, dg.supporting, method, dg.components)
        return Written(full_url(ID_GRADE, value_id), res, f"Observation?identifier={ID_GRADE}|{value_id}")

    def _observation_tail(self, res: dict[str, Any], reasons: Sequence[str], flags: Sequence[str],
                          evidence: Sequence[str], supporting: Sequence[str], method: str,
                          components: Sequence[Component]) -> dict[str, Any]:
        """What every grade Observation ends with: notes, evidence, method, engine device, components.
        Input Observations that decided the grade go in derivedFrom; Conditions and the medications used
        go in the workflow-supportingInfo extension (derivedFrom may only point at Observations)."""
        notes = list(reasons) + (["review flags: " + ", ".join(flags)] if flags else [])
        if notes:
            res["note"] = [{"text": "; ".join(notes)}]
        not_observation = ("Condition/", "MedicationAdministration/", "MedicationStatement/", "Procedure/")
        observations = [e for e in evidence if not e.startswith(not_observation)]
        other = [e for e in evidence if e.startswith(not_observation)] + list(supporting)
        if other:
            res["extension"] = [{"url": EXT_SUPPORTING_INFO, "valueReference": _input_ref(e)}
                                for e in dict.fromkeys(other)]
        res["method"] = {"coding": [coding(CS_TOXICITY, "automated-grading", "Automated grading")], "text": method}
        res["device"] = ref(self.device)
        if observations:
            res["derivedFrom"] = [_input_ref(e) for e in dict.fromkeys(observations)]
        if components:
            res["component"] = [self._component(c) for c in components]
        # Element order does not matter in FHIR JSON; keep it readable anyway.
        return {k: res[k] for k in OBSERVATION_ORDER if k in res}

    def _component(self, c: Component) -> dict[str, Any]:
        out: dict[str, Any] = {"code": {"coding": [coding(CS_TOXICITY, c.code, self.codes.component_display(c.code))]}}
        if c.kind == "celsius":
            out["valueQuantity"] = {"value": round(float(c.value), 2), "unit": "°C", "system": UCUM, "code": "Cel"}
        elif c.kind == "boolean":
            out["valueBoolean"] = bool(c.value)
        elif c.kind == "integer":
            out["valueInteger"] = int(c.value)
        elif c.kind == "decimal":  # a ratio or other unitless number
            out["valueQuantity"] = {"value": float(c.value), "unit": "ratio", "system": UCUM, "code": "1"}
        else:  # a coded answer from one of the project's answer lists
            out["valueCodeableConcept"] = {"coding": [coding(ANSWER_SYSTEMS.get(c.kind, cs(c.kind)), str(c.value))]}
        return out

    # ---- episode Condition and AdverseEvent ---------------------------------------------------

    def _episode_key(self, course: Course, ep: Episode) -> tuple[str, str, str, str, int]:
        tox = ep.toxicity.value
        return (course.patient.key, course.infusion.ref, tox, self.codes.scale(tox)[0], ep.onset_day)

    def condition(self, course: Course, ep: Episode, daily: dict[int, Written]) -> Written:
        """The Condition of a CRS or ICANS episode: stage = maximum grade and the day that reached it."""
        value_id = stable_hash(*self._episode_key(course, ep), "episode")
        note = (f"Maximum grade proven only as at least {ep.max_grade}: " + "; ".join(ep.max_day.missing)
                if ep.max_is_lower_bound else None)
        return self._condition(course, ep.toxicity.value, value_id, ep.onset, ep.abatement, ep.max_grade, None,
                               daily[ep.max_day.day], [daily[d.day] for d in ep.days if d.day in daily], note)

    def _condition(self, course: Course, tox: str, value_id: str, onset: datetime, abatement: datetime | None,
                   grade: int | None, term: tuple[str, str, str] | None, assessment: Written | None,
                   evidence: list[Written], note: str | None = None) -> Written:
        scale, scale_display, _ = self.codes.scale(tox)
        resolved = abatement is not None
        res: dict[str, Any] = {
            "resourceType": "Condition",
            "meta": {"profile": [PROFILE_EPISODE]},
            "identifier": [{"system": ID_EPISODE, "value": value_id}],
            "clinicalStatus": {"coding": [coding(COND_CLINICAL, "resolved" if resolved else "active",
                                                 "Resolved" if resolved else "Active")]},
            "verificationStatus": {"coding": [coding(COND_VERIFICATION, "provisional", "Provisional")]},
            "category": [{"coding": [coding(COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")]}],
            "code": {"coding": self.codes.toxicity_codings(tox, grade, term), "text": self.codes.display(tox)},
            "subject": dict(course.patient.reference),
            "onsetDateTime": iso(onset),
        }
        if abatement is not None:
            res["abatementDateTime"] = iso(abatement)
        if grade is not None:
            stage: dict[str, Any] = {"summary": self.codes.grade_concept(grade)}
            if assessment is not None:
                stage["assessment"] = [ref(assessment)]
            stage["type"] = {"coding": [coding(CS_TOXICITY, scale, scale_display)]}
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
        value_id = stable_hash(*self._episode_key(course, ep), "adverse-event")
        return self._adverse_event(course, tox, value_id, ep.max_grade, ep.onset, ep.abatement is not None,
                                   ref(condition), self.codes.toxicity_codings(tox, ep.max_grade), suspects)

    def event_adverse_event(self, course: Course, ev: Event, condition: dict[str, str],
                            suspects: Sequence[SuspectLike]) -> Written:
        """The AdverseEvent of an event beyond CRS/ICANS (IEC-HS, ICAHT, infection, neurological event)."""
        tox = ev.toxicity.value
        value_id = stable_hash(course.patient.key, course.infusion.ref, tox, ev.key, "adverse-event")
        return self._adverse_event(course, tox, value_id, ev.max_grade, ev.onset, ev.abatement is not None,
                                   condition, self.codes.toxicity_codings(tox, ev.max_grade, ev.term), suspects,
                                   ev.serious)

    def _adverse_event(self, course: Course, tox: str, value_id: str, grade: int | None, onset: datetime,
                       resolved: bool, condition: dict[str, str], codings: list[dict[str, Any]],
                       suspects: Sequence[SuspectLike], serious: bool | None = None) -> Written:
        res: dict[str, Any] = {
            "resourceType": "AdverseEvent",
            "meta": {"profile": [PROFILE_AE]},
        }
        if grade is not None:
            res["extension"] = [{"url": EXT_AE_GRADE, "valueCodeableConcept": self.codes.grade_concept(grade)}]
        outcome = "fatal" if grade == 5 else ("resolved" if resolved else "ongoing")
        res.update({
            "identifier": {"system": ID_AE, "value": value_id},
            "actuality": "actual",
            "event": {"coding": codings, "text": self.codes.display(tox)},
            "subject": dict(course.patient.reference),
            "date": iso(onset),
            "recordedDate": iso(self.recorded),
            "resultingCondition": [condition],
        })
        if grade is not None:
            sev = SEVERITY.get(grade, "severe")
            res["severity"] = {"coding": [coding(AE_SEVERITY, sev, sev.capitalize())]}
            serious = grade >= 3 if serious is None else serious
        if serious is not None:  # an ungraded event may still be serious (a new malignancy)
            res["seriousness"] = {"coding": [coding(AE_SERIOUSNESS, "serious" if serious else "non-serious",
                                                    "Serious" if serious else "Non-serious")]}
        res["outcome"] = {"coding": [coding(AE_OUTCOME, outcome, outcome.capitalize())]}
        res["contributor"] = [ref(self.device)]
        res["suspectEntity"] = [{
            "instance": _input_ref(s.ref),
            "causality": [{
                "assessment": {"coding": [coding(AE_CAUSALITY_ASSESS, s.assessment,
                                                 CAUSALITY_DISPLAY[s.assessment])]},
                "productRelatedness": s.rule,
                "method": {"coding": [coding(AE_CAUSALITY_METHOD, "ProbabilityScale", "Probability Scale")]},
            }],
        } for s in suspects]
        return Written(full_url(ID_AE, value_id), res, f"AdverseEvent?identifier={ID_AE}|{value_id}")

    # ---- assessments and events beyond CRS/ICANS ------------------------------------------------

    def assessment(self, course: Course, a: Assessment, key: str, focus: Written | None = None) -> Written:
        """One Observation for an assessment that is not a daily grade (ICAHT, CAR-HEMATOTOX, IEC-HS,
        an infection's or neurological event's CTCAE grade, a treatment-response summary)."""
        value_id = stable_hash(course.patient.key, course.infusion.ref, a.code, key)
        res = _grade_header(course, value_id, a.code, self.codes.assessment_display(a.code),
                            self.codes.assessment_display(a.code) or a.code)
        if focus is not None:  # e.g. a treatment-response summary is about its episode Condition
            res["focus"] = [ref(focus)]
        day = course.day_of(Moment(a.start))
        relative = _relative_day(course, day)
        if a.end is not None:
            res["effectivePeriod"] = {"extension": [relative], "start": iso(a.start), "end": iso(a.end)}
        else:
            res["effectiveDateTime"] = iso(a.start)
            res["_effectiveDateTime"] = {"extension": [relative]}
        if a.state == State.NOT_ASSESSABLE:
            res["dataAbsentReason"] = {"coding": [coding(DATA_ABSENT, "unknown", "Unknown")],
                                       "text": "Not assessable: missing " + ("; ".join(a.missing) or "data")}
        elif a.value is not None:
            res["valueInteger"] = a.value
        # else: a summary carried by its components alone (treatment-response), like a panel
        interp: list[dict[str, Any]] = []
        if a.state == State.AT_LEAST and a.value is not None:
            interp.append({"coding": [coding(CS_GRADE_QUALIFIER, "at-least", "At least this grade")],
                           "text": f"At least {a.value}: missing " + "; ".join(a.missing)})
        if a.interpretation:
            interp.append({"coding": [coding(CS_RISK, a.interpretation, f"{a.interpretation.capitalize()} risk")],
                           "text": f"{a.interpretation} risk"})
        if interp:
            res["interpretation"] = interp
        method = f"cart-fhir {__version__}" + (f", criteria table {a.table}" if a.table else "")
        res = self._observation_tail(res, a.reasons, a.flags, a.evidence, a.supporting, method, a.components)
        return Written(full_url(ID_GRADE, value_id), res, f"Observation?identifier={ID_GRADE}|{value_id}")

    def event_condition(self, course: Course, ev: Event, assessment: Written | None) -> Written:
        """Our own Condition for an event no input Condition records (IEC-HS, ICAHT, a positive culture)."""
        value_id = stable_hash(course.patient.key, course.infusion.ref, ev.toxicity.value, ev.key, "episode")
        return self._condition(course, ev.toxicity.value, value_id, ev.onset, ev.abatement, ev.max_grade, ev.term,
                               assessment, [assessment] if assessment is not None else [])

    # ---- Provenance ---------------------------------------------------------------------------

    def provenance(self, patient_key: str, targets: list[Written], sources: list[str]) -> Written:
        """One per patient per run. R4 Provenance has no identifier element: the run key is a meta.tag
        in the grading-run identifier system, and the conditional update searches on _tag."""
        value_id = stable_hash(patient_key, "grading-run", __version__, sorted(self.versions.items()))
        res: dict[str, Any] = {
            "resourceType": "Provenance",
            "meta": {"profile": [PROFILE_PROVENANCE], "tag": [{"system": ID_RUN, "code": value_id}]},
            "target": [ref(t) for t in targets],
            "recorded": iso(self.recorded),
            "activity": {"coding": [coding(V3_DATA_OPERATION, "CREATE", "create")]},
            "agent": [{"type": {"coding": [coding(PROV_PARTICIPANT, "assembler", "Assembler")]},
                       "who": ref(self.device)}],
        }
        if sources:
            res["entity"] = [{"role": "source", "what": _input_ref(s)} for s in sources]
        return Written(full_url(ID_RUN, value_id), res, f"Provenance?_tag={ID_RUN}|{value_id}")

