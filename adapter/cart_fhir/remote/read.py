"""Read patients from a FHIR server as input Items: $everything where the server has it, else per-type searches.

Round trips per patient (measured in tests/test_remote_integration.py): $everything answers in one page up to
the page size, plus one search for Medications the page refers to but does not carry; the fallback reads
infusion-related resources in one batch, then Observations in a date window that starts before the first
infusion early enough for the CAR-HEMATOTOX baseline (day -21 at the latest, car-hematotox-2021.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from ..constants import CS_PRODUCT, RXNORM
from ..errors import BadInput, Location
from ..ingest.codes import Terminology, texts_of
from ..ingest.index import ref_key, used
from ..ingest.read import Item
from .client import FhirClient, next_link, page_resources
from .errors import ServerError, status_code

log = logging.getLogger(__name__)

# Observations from this many days before the first infusion are read: the CAR-HEMATOTOX baseline window
# starts at LD start - 7 days, LD from day -14 (car-hematotox-2021.yaml), so day -21; a week of margin for
# infusion delays and for a re-infusion's lymphodepletion.
OBSERVATION_LOOKBACK_DAYS = 28
CPT = "http://www.ama-assn.org/go/cpt"


class PatientNotFound(BadInput):
    """The server has no such patient (404/410): the service answers 404, the CLI exits 2."""


@dataclass(slots=True)
class ReadStats:
    patients: int = 0
    resources: int = 0
    round_trips: int = 0  # FHIR requests sent while reading (retries included)
    per_patient: dict[str, int] = field(default_factory=dict)  # "Patient/x" -> round trips


class PatientReader:
    """Yield the resources of one patient, or of a cohort, as Items located at the server."""

    def __init__(self, client: FhirClient, terminology: Terminology, *,
                 observation_categories: tuple[str, ...] = (), use_everything: bool = True) -> None:
        self.client = client
        self.terminology = terminology
        self.tables = terminology.tables
        self.observation_categories = observation_categories
        self.use_everything = use_everything
        self.stats = ReadStats()

    # ---- one patient ---------------------------------------------------------------------------

    def patient(self, patient_id: str) -> list[Item]:
        """Every resource the grading reads for this patient (and the Medications they refer to)."""
        patient_id = patient_id.removeprefix("Patient/")
        before = self.client.http.round_trips
        caps = self.client.capabilities()
        if self.use_everything and caps.everything:
            resources = self._everything(patient_id)
        else:
            resources = self._searches(patient_id)
        resources = self._with_medications(resources)
        if not any(r.get("resourceType") == "Patient" and r.get("id") == patient_id for r in resources):
            raise PatientNotFound(f"Patient/{patient_id} was not found on the server", Location(self.client.base_url))
        used = self.client.http.round_trips - before
        self.stats.patients += 1
        self.stats.resources += len(resources)
        self.stats.round_trips += used
        self.stats.per_patient[f"Patient/{patient_id}"] = used
        log.debug("read Patient/%s: %d resources in %d round trips", patient_id, len(resources), used)
        where = f"{self.client.base_url}/Patient/{patient_id}"
        return [Item(r, f"{self.client.base_url}/{r['resourceType']}/{r['id']}" if r.get("id") else None, where)
                for r in resources]

    def _everything(self, pid: str) -> list[dict[str, Any]]:
        try:
            return _used(self.client.pages(f"Patient/{pid}/$everything", {"_count": [self.client.page_size]}))
        except ServerError as exc:
            if exc.status == 404:
                raise PatientNotFound(f"Patient/{pid} was not found on the server",
                                      Location(self.client.base_url)) from exc
            if exc.status not in (400, 405, 501):
                raise
            log.warning("Patient/$everything refused (HTTP %s): reading by searches instead", exc.status)
            return self._searches(pid)

    def _searches(self, pid: str) -> list[dict[str, Any]]:
        """Patient, medications, procedures and conditions in one batch; then Observations in a date window."""
        subject = f"Patient/{pid}"
        searches = [
            ("MedicationAdministration", {"patient": subject}, ("medication",)),
            ("MedicationStatement", {"patient": subject}, ("medication",)),
            ("Procedure", {"patient": subject}, ()),
            ("Condition", {"patient": subject}, ()),
        ]
        found: list[dict[str, Any]] = []
        patient = self._first_batch(pid, searches, found)
        if patient is None:
            raise PatientNotFound(f"{subject} was not found on the server", Location(self.client.base_url))
        found.append(patient)
        found = self._with_medications(found)
        window = self._observation_params(subject, found)
        if window is not None:
            found.extend(self.client.search("Observation", **window))
        return _used(found)

    def _first_batch(self, pid: str, searches: list[tuple[str, dict[str, str], tuple[str, ...]]],
                     found: list[dict[str, Any]]) -> dict[str, Any] | None:
        """One batch of GETs where the server takes batches (one round trip), else one search at a time."""
        requests_ = [f"Patient/{pid}"] + [_query(rtype, self.client.search_params(rtype, include=inc, **params))
                                          for rtype, params, inc in searches]
        if not self.client.capabilities().batch:
            for rtype, params, inc in searches:
                found.extend(self.client.search(rtype, include=inc, **params))
            try:
                return self.client.read("Patient", pid)
            except ServerError as exc:
                if exc.status in (404, 410):
                    return None
                raise
        answer = self.client.bundle({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": url}} for url in requests_]})
        entries = answer.get("entry") or []
        if len(entries) != len(requests_):
            raise ServerError("POST", self.client.base_url, 200,
                              detail=f"a batch of {len(requests_)} reads answered with {len(entries)} entries")
        patient: dict[str, Any] | None = None
        for url, entry in zip(requests_, entries, strict=True):
            status = str((entry.get("response") or {}).get("status", "")).split(" ")[0]
            res = entry.get("resource")
            if url.startswith("Patient/"):
                if status.startswith("2") and isinstance(res, dict):
                    patient = res
                elif not status.startswith(("404", "410")):
                    raise ServerError("GET", self.client.http.url(url), status_code(status),
                                      outcome=(entry.get("response") or {}).get("outcome"), detail="(in a batch)")
                continue
            if not status.startswith("2") or not isinstance(res, dict) or res.get("resourceType") != "Bundle":
                raise ServerError("GET", self.client.http.url(url), status_code(status),
                                  outcome=(entry.get("response") or {}).get("outcome"), detail="(in a batch)")
            found.extend(page_resources(res))
            nxt = next_link(res)
            if nxt is not None:  # the rest of a long search: page on from the server's own link
                found.extend(self.client.pages(nxt, None))
        return patient

    def _observation_params(self, subject: str, found: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Observations from OBSERVATION_LOOKBACK_DAYS before the first CAR-T infusion; None when the patient
        has none (then nothing can be graded, and the run report says so, without reading Observations)."""
        meds = {f"Medication/{r['id']}": r for r in found if r.get("resourceType") == "Medication" and r.get("id")}
        dates = sorted(d for r in found if self._is_infusion(r, meds) for d in [_earliest_date(r)] if d is not None)
        if not dates:
            return None
        params: dict[str, Any] = {"patient": subject,
                                  "date__ge": (dates[0] - timedelta(days=OBSERVATION_LOOKBACK_DAYS)).isoformat()}
        if self.observation_categories:
            params["category"] = ",".join(self.observation_categories)
        return params

    def _is_infusion(self, res: dict[str, Any], meds: dict[str, dict[str, Any]]) -> bool:
        """The input contract's CAR-T infusion test (as the extractor applies it), on one resource."""
        rtype = res.get("resourceType")
        if rtype == "Procedure":
            return self.terminology.is_cart_procedure(res.get("code"))
        if rtype != "MedicationAdministration":
            return False
        cc = res.get("medicationCodeableConcept")
        key = _medication_key(res)
        if cc is None and key in meds:
            cc = meds[key].get("code")
        return self.terminology.cart_product(cc, texts_of(cc)) is not None

    def _with_medications(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add the Medications that administrations refer to but the server did not include (one search)."""
        have = {f"Medication/{r['id']}" for r in resources if r.get("resourceType") == "Medication" and r.get("id")}
        missing = sorted({key for r in resources if r.get("resourceType") in ("MedicationAdministration",
                                                                            "MedicationStatement")
                          for key in [_medication_key(r)] if key is not None and key not in have})
        if missing:
            ids = ",".join(k.split("/", 1)[1] for k in missing)
            resources = resources + [r for r in self.client.search("Medication", _id=ids)
                                     if r.get("resourceType") == "Medication"]
        return resources

    # ---- cohorts -------------------------------------------------------------------------------

    def group_members(self, group_id: str) -> list[str]:
        """Patient ids of a Group's members (inactive members left out)."""
        group = self.client.read("Group", group_id.removeprefix("Group/"))
        out = []
        for m in group.get("member") or []:
            ref = (m.get("entity") or {}).get("reference") if isinstance(m, dict) else None
            if m.get("inactive") is True or not isinstance(ref, str):
                continue
            key = ref_key(ref)
            if key.startswith("Patient/"):
                out.append(key.split("/", 1)[1])
        return list(dict.fromkeys(out))

    def infused_patients(self) -> list[str]:
        """Patients with a CAR-T infusion coded as the input contract says (RxNorm product codes or the project
        code on a MedicationAdministration or its Medication; CPT 38228 or the project code on a Procedure).
        Infusions recognised only by their free text are not searchable: name those patients with --patient
        or a Group."""
        products = [f"{RXNORM}|{c}" for row in self.tables.products.rows for c in row.rxnorm]
        products.append(f"{CS_PRODUCT}|car-t-cell-product")
        procedures = ",".join(f"{c.system}|{c.code}" for c in self.tables.products.procedure_codes)
        subjects: list[str] = []
        for ma in self.client.search("MedicationAdministration", code=",".join(products), _elements="subject"):
            subjects.append(_subject(ma))
        meds = [m["id"] for m in self.client.search("Medication", code=",".join(products), _elements="id")
                if m.get("resourceType") == "Medication" and m.get("id")]
        if meds:
            medication = ",".join(f"Medication/{m}" for m in meds)
            for ma in self.client.search("MedicationAdministration", medication=medication, _elements="subject"):
                subjects.append(_subject(ma))
        for proc in self.client.search("Procedure", code=procedures, _elements="subject"):
            subjects.append(_subject(proc))
        return sorted({s.split("/", 1)[1] for s in subjects if s.startswith("Patient/")})

    def patients(self, ids: Iterable[str]) -> Iterator[Item]:
        for pid in ids:
            yield from self.patient(pid)


def _used(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only what the grading reads (the run report would count the rest as ignored anyway): the types it
    uses, and our own results of other types (a clinician may have reviewed them: reviews.py)."""
    return [r for r in resources if used(r)]


def _query(rtype: str, params: dict[str, list[Any]]) -> str:
    from urllib.parse import urlencode

    return f"{rtype}?{urlencode([(k, v) for k, vals in params.items() for v in vals], safe=',|:/')}"


def _subject(res: dict[str, Any]) -> str:
    ref = (res.get("subject") or {}).get("reference")
    return ref_key(ref) if isinstance(ref, str) else ""


def _medication_key(res: dict[str, Any]) -> str | None:
    ref = (res.get("medicationReference") or {}).get("reference")
    if not isinstance(ref, str) or ref.startswith("#"):
        return None
    key = ref_key(ref)
    return key if key.startswith("Medication/") else None


def _earliest_date(res: dict[str, Any]) -> date | None:
    """The date an administration, statement or procedure started (any of the R4 choice elements)."""
    for name in ("effectiveDateTime", "performedDateTime", "occurrenceDateTime"):
        v = res.get(name)
        if isinstance(v, str) and len(v) >= 10:
            return _date(v)
    for name in ("effectivePeriod", "performedPeriod"):
        v = res.get(name)
        if isinstance(v, dict) and isinstance(v.get("start"), str):
            return _date(v["start"])
    return None


def _date(text: str) -> date | None:
    try:
        # The UTC offset can move the local date by a day: one day earlier keeps the window safe.
        return date.fromisoformat(text[:10]) - timedelta(days=1)
    except ValueError:
        return None
