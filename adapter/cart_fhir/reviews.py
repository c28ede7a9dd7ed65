"""A clinician's review of cart-fhir's own results, read from the input and matched to what is computed now
(issue 14 item 3: clinician authority).

Our results come back in the input whenever it holds them (`grade --server` reads `Patient/$everything`, the
service and CDS Hooks read the same, an EHR export may hold them). Ingest leaves them out of the findings
(ingest/extract.py); here, one of them that someone else has changed or reviewed (ours.clinician_owned: a
Condition confirmed or refuted by a person, or a result that no longer hashes to the content-hash tag we
wrote) becomes a `Review`. It is matched to what cart-fhir computes now by business key: the identifier
output/resources.py gives the episode or event Condition (same patient, infusion, toxicity and onset day or
event). The summaries, registry rows, CDS cards and the run report then show the clinician's grade, with
cart-fhir's computation beside it; a refuted result is shown as refuted, not as an active toxicity.

What is written back is unchanged: a reviewed result is kept as the server holds it (remote/plan.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .constants import CS_GRADE, CS_TOXICITY, ID_EPISODE
from .ours import REVIEWED, business_key, clinician_owned, verification
from .output.ids import full_url, stable_hash

if TYPE_CHECKING:
    from .grading.result import Episode, Event
    from .tables import Tables
    from .timeline import Course


class Verdict(StrEnum):
    CONFIRMED = "confirmed"  # verificationStatus confirmed set by a person (CDS card accepted, or in the EHR)
    REFUTED = "refuted"  # verificationStatus refuted: the clinician says this is not the toxicity
    EDITED = "edited"  # changed on the server by someone else (e.g. the grade), not confirmed or refuted


@dataclass(frozen=True, slots=True)
class Review:
    """Our Condition as a clinician left it: its verdict and the grade it now holds."""

    key: str  # business key, "Condition?identifier=system|value"
    ref: str  # where it lives, "Condition/123" (its server id: no patient data)
    verdict: Verdict
    grade: int | None  # the grade the Condition holds (None: none readable)
    toxicity: str | None  # our toxicity code on it (crs, icans, iec-hs, ...)
    subject: str | None  # Condition.subject.reference ("Patient/123")
    onset: str | None  # Condition.onsetDateTime as held

    @property
    def shown_grade(self) -> int | None:
        """The grade the summaries report: none for a refuted result (not an active toxicity)."""
        return None if self.verdict == Verdict.REFUTED else self.grade

    def phrase(self, computed: str) -> str:
        return describe(self.verdict.value, self.grade, computed)


REFUTED_SHOWN = "refuted by a clinician"


def describe(verdict: str, grade: int | None, computed: str) -> str:
    """How the terminal table, the registry and the cards say a reviewed result: the clinician's word first,
    cart-fhir's beside it, e.g. "grade 3 (edited by a clinician; cart-fhir computes grade 2)", "refuted by a
    clinician (cart-fhir computes grade 2)"."""
    if verdict == Verdict.REFUTED:
        return f"{REFUTED_SHOWN} ({computed})"
    head = f"grade {grade}" if grade is not None else "unreadable grade"
    return f"{head} ({verdict} by a clinician; {computed})"


def computed_text(grade: int | None, lower_bound: bool = False) -> str:
    """cart-fhir's own computation, as shown beside a clinician's grade."""
    if grade is None:
        return "cart-fhir: not assessable"
    return f"cart-fhir computes {'>= ' if lower_bound else 'grade '}{grade}"


def reviews_in(resources: Iterable[Mapping[str, Any]]) -> dict[str, Review]:
    """The reviewed episode and event Conditions among our results in the input, by business key."""
    ours = list(resources)
    # references between our results read as business keys, as when their content hash was computed
    to_key = {}
    for r in ours:
        key = business_key(r)
        if key is not None and isinstance(r.get("id"), str):
            to_key[f"{r['resourceType']}/{r['id']}"] = full_url(*key.partition("=")[2].split("|", 1))
    out: dict[str, Review] = {}
    for r in ours:
        if r.get("resourceType") != "Condition" or "entered-in-error" in verification(r):
            continue
        key = business_key(r)
        if key is None or not key.startswith(f"Condition?identifier={ID_EPISODE}|") or not clinician_owned(r, to_key):
            continue
        codes = verification(r) & REVIEWED
        verdict = Verdict.REFUTED if "refuted" in codes else Verdict.CONFIRMED if codes else Verdict.EDITED
        ref = f"Condition/{r['id']}" if isinstance(r.get("id"), str) else key
        out[key] = Review(key, ref, verdict, _grade(r), _toxicity(r),
                          (r.get("subject") or {}).get("reference"), r.get("onsetDateTime"))
    _adverse_event_reviews(ours, to_key, out)
    return out


def _adverse_event_reviews(ours: list[Mapping[str, Any]], to_key: Mapping[str, str], out: dict[str, Review]) -> None:
    """An AdverseEvent of ours someone edited (its grade, outcome or seriousness: it no longer hashes to its
    tag) reviews the episode its `resultingCondition` is, unless that Condition carries a review of its own
    (the Condition is the result CDS feedback and EHR problem lists act on). Its grade is the AE's."""
    key_of_url = {}
    for r in ours:
        key = business_key(r)
        if r.get("resourceType") == "Condition" and key is not None:
            key_of_url[full_url(*key.partition("=")[2].split("|", 1))] = key
    for r in ours:
        if r.get("resourceType") != "AdverseEvent" or not clinician_owned(r, to_key):
            continue
        refs = [str(c.get("reference")) for c in r.get("resultingCondition") or [] if isinstance(c, dict)]
        keys = [key_of_url.get(to_key.get(ref, ref)) for ref in refs]
        key = next((k for k in keys if k is not None and k.startswith(f"Condition?identifier={ID_EPISODE}|")), None)
        if key is None or key in out:
            continue
        ref = f"AdverseEvent/{r['id']}" if isinstance(r.get("id"), str) else key
        out[key] = Review(key, ref, Verdict.EDITED, _ae_grade(r), _toxicity(r, "event"),
                          (r.get("subject") or {}).get("reference"), r.get("date"))


def _ae_grade(event: Mapping[str, Any]) -> int | None:
    """The grade an AdverseEvent of ours holds: our toxicity-grade coding in its grade extension."""
    return _grade_in(ext.get("valueCodeableConcept") for ext in event.get("extension") or [] if isinstance(ext, dict))


def _grade(condition: Mapping[str, Any]) -> int | None:
    """The grade a Condition of ours holds: our toxicity-grade coding in its stage summary."""
    return _grade_in(stage.get("summary") for stage in condition.get("stage") or [] if isinstance(stage, dict))


def _grade_in(concepts: Iterable[Any]) -> int | None:
    """The first toxicity-grade code among these CodeableConcepts, as a number (None: none, or not a number)."""
    for cc in concepts:
        for c in (cc or {}).get("coding") or [] if isinstance(cc, dict) else []:
            if isinstance(c, dict) and c.get("system") == CS_GRADE:
                try:
                    return int(str(c.get("code")))
                except ValueError:
                    return None
    return None


def _toxicity(resource: Mapping[str, Any], element: str = "code") -> str | None:
    for c in (resource.get(element) or {}).get("coding") or []:
        if isinstance(c, dict) and c.get("system") == CS_TOXICITY:
            return str(c.get("code"))
    return None


def episode_key(course: Course, ep: Episode, tables: Tables) -> str:
    """The business key output/resources.py gives a daily-graded episode's Condition."""
    tox = ep.toxicity.value
    value = stable_hash(course.patient.key, course.infusion.ref, tox, tables.output.toxicities[tox].scale,
                        ep.onset_day, "episode")
    return f"Condition?identifier={ID_EPISODE}|{value}"


def event_key(course: Course, ev: Event) -> str:
    """The business key of our own Condition for an event (IEC-HS, ICAHT, a positive culture, ...)."""
    value = stable_hash(course.patient.key, course.infusion.ref, ev.toxicity.value, ev.key, "episode")
    return f"Condition?identifier={ID_EPISODE}|{value}"


def unmatched(reviews: Mapping[str, Review], matched: set[str], patient_key: str) -> list[Review]:
    """The patient's reviewed results that cart-fhir no longer computes (the data changed since): still shown,
    the clinician's word stands."""
    return [r for k, r in reviews.items() if k not in matched and r.subject == patient_key]
