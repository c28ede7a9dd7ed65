"""Translate one patient's FHIR resources (plain JSON) into the graders' facts; validate only what is used."""

from __future__ import annotations

from datetime import UTC, date, timezone
from typing import Any

import msgspec

from ..constants import CS_TOXICITY, ICD10CM
from ..errors import BadInput, Location, json_type, shown
from ..model import (
    ClinicianAttribution,
    ConditionFact,
    DrugAdmin,
    Infusion,
    Moment,
    PatientData,
    Reading,
)
from ..ours import is_ours
from ..report import RunReport
from ..tables import ConceptRow, DrugRow
from . import shape
from .codes import Terminology, codings, texts_of
from .fast import OBS_USABLE, FastItem
from .index import Indexed, InputIndex
from .timeparse import TimeError, has_offset, parse_moment
from .units import UnitConverter
from .values import ValueChecks, component_path

MA_USABLE = frozenset({"completed", "in-progress", "stopped"})
MS_USABLE = frozenset({"active", "completed", "intended"})
COND_EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
MALIGNANCY_TABLE = "second-malignancy"  # ConditionFact.table of new malignancies (second-malignancy.yaml)
# ICD-10-CM categories that are CAR-T toxicities themselves: CRS D89.83-, ICANS G92.0- (output-codes.yaml).
CART_ICD10_PREFIXES = ("D89.83", "G92.0")




# effective[x] / performed[x] elements that hold one time, in the order they are read.
_TIME_ELEMENTS = {p: (p + "DateTime", p + "Instant") for p in ("effective", "performed")}




class Extractor:
    """Holds the lookups for a run; `patient()` turns one patient's resources into a PatientData."""

    def __init__(self, terminology: Terminology, units: UnitConverter, report: RunReport) -> None:
        self.term = terminology
        self.units = units
        self.report = report
        self.medications_used: set[str] = set()  # Medication resources some administration referred to
        self._attributing: set[str] = set()  # Conditions read as a clinician's attribution (not "unused")
        # cart-fhir's own results found in the input ($everything returns them): never input findings or a
        # clinician's attribution; kept for reviews.py (a clinician's review of them is shown, not graded)
        self.ours: list[dict[str, Any]] = []
        self._moments: dict[tuple[str, timezone], tuple[Moment, bool]] = {}  # see _moment()
        self.values = ValueChecks(terminology, units)  # the value checks, shared with the fast reader

    # ---- entry point ---------------------------------------------------------------------------

    def patient(self, idx: InputIndex, pkey: str) -> PatientData:
        pat = idx.by_key[pkey]
        res = pat.resource
        self._moments.clear()  # timestamps rarely repeat across patients: keep the caches small
        self.values.quantities.clear()
        shape.objects(res.get("identifier"), "Patient.identifier", pat)
        birth = self._birth_date(res, pat.loc)
        pid = res.get("id") or pkey
        data = PatientData(key=pkey, id=pid, reference=self._patient_reference(res, pkey, pat.loc),
                           birth_date=birth, source=str(pat.loc), file=pat.item.file, label=_label(res))
        shape.string(res.get("deceasedDateTime"), "Patient.deceasedDateTime", pat)
        if isinstance(res.get("deceasedDateTime"), str):
            data.deceased = self._moment(res["deceasedDateTime"], "Patient.deceasedDateTime", pat, UTC)
        entries = idx.by_patient.get(pkey, [])
        self.report.resources_used += 1
        for ent in entries:
            if ent.resource["resourceType"] in ("MedicationAdministration", "Procedure"):
                self._infusion(ent, idx, data)
        data.infusions.sort(key=lambda i: i.when.at)
        tz = data.infusions[0].tz if data.infusions else UTC
        if data.infusions and all(i.when.date_only for i in data.infusions):
            tz = self._charting_offset(entries, tz)
            data.infusions = [Infusion(i.ref, Moment(i.when.at.replace(tzinfo=tz), True), i.product)
                              for i in data.infusions]
        observation = self._observation  # most entries are Observations: skip the dispatch for them
        readings, unverified, used = data.readings, self.report.unverified_rows, 0
        for ent in entries:
            item = ent.item
            if type(item) is FastItem and item.ignored is None:  # most of all: read on the fast path, its
                readings.extend(item.readings)  # Readings made (ingest/fast.py); nothing here can fail
                used += 1
                if item.unverified:
                    unverified.update(item.unverified)
                continue
            try:
                if ent.resource["resourceType"] == "Observation":
                    observation(ent, data, tz)
                else:
                    self._resource(ent, idx, data, tz)
            except BadInput as err:
                self.report.error(err)
        self.report.resources_used += used
        latest = [r.when.at for r in data.readings] + [d.start.at for d in data.drugs] + \
                 [d.end.at for d in data.drugs if d.end is not None]
        data.horizon = max(latest) if latest else None
        return data

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _charting_offset(entries: list[Indexed], default: timezone) -> timezone:
        """A bare-date infusion ("2024-05-01") has no offset: its day 0 is that date as the site charts it,
        so the axis takes the UTC offset of the first timed observation of the patient."""
        for ent in entries:
            item = ent.item
            v = item.effective if type(item) is FastItem else ent.resource.get("effectiveDateTime")
            if isinstance(v, str) and "T" in v and has_offset(v):
                try:
                    off = parse_moment(v, default).at.utcoffset()
                except TimeError:
                    continue
                if off is not None:
                    return timezone(off)
        return default

    def _patient_reference(self, res: dict[str, Any], pkey: str, loc: Location) -> dict[str, object]:
        """How output refers to the patient: Patient/id; for a Patient known only by a urn:uuid fullUrl, a
        logical reference by its first identifier (a urn:uuid means nothing outside its Bundle)."""
        if pkey.startswith("Patient/"):
            return {"reference": pkey}
        idents = res.get("identifier")
        if isinstance(idents, list) and idents and isinstance(idents[0], dict) \
                and isinstance(idents[0].get("value"), str):
            ident = {k: idents[0][k] for k in ("system", "value") if isinstance(idents[0].get(k), str)}
            return {"identifier": ident, "type": "Patient"}
        self.report.warn("Patient has no id and no identifier: output refers to it by its fullUrl", loc)
        return {"reference": pkey, "type": "Patient"}

    def _birth_date(self, res: dict[str, Any], loc: Location) -> date | None:
        b = res.get("birthDate")
        if b is None:
            return None
        if not isinstance(b, str):
            raise BadInput(f"Patient.birthDate must be a date string, got {json_type(b)}", loc, shown(b))
        try:
            return date.fromisoformat(b)
        except ValueError:
            if len(b) in (4, 7):  # a partial birth date: the age is uncertain, ICE/CAPD choice by instrument
                self.report.warn("Patient.birthDate is partial: age-based rules use what was recorded", loc, shown(b))
                return None
            raise BadInput("Patient.birthDate is not a valid FHIR date", loc, shown(b)) from None

    def _moment(self, value: Any, path: str, at: Indexed, tz: timezone) -> Moment:
        """`path` names the element in messages; `at` is the resource (its Location is built only for one)."""
        # Vital signs charted together share one timestamp: parse each (string, offset) once per patient
        # (the cache is cleared in patient()). Moments are frozen, so sharing one is safe.
        key = (value, tz) if type(value) is str else None
        hit = self._moments.get(key) if key is not None else None
        if hit is None:
            try:
                m = parse_moment(value, tz)
            except TimeError as exc:
                raise BadInput(f"{path} {exc}", at.loc, shown(exc.value)) from exc
            hit = (m, not isinstance(value, str) or has_offset(value))
            if key is not None:
                self._moments[key] = hit
        if not hit[1]:
            self.report.warn(f"{path} has no UTC offset: taken in the infusion's offset", at.loc, shown(value))
        return hit[0]

    def _effective(self, res: dict[str, Any], at: Indexed, tz: timezone, prefix: str = "effective"
                   ) -> tuple[Moment, Moment | None, bool] | None:
        """(start, end, instant) of effective[x] / performed[x]; None when the resource has no time."""
        rtype = res["resourceType"]
        for element in _TIME_ELEMENTS[prefix]:
            v = res.get(element)
            if v is not None:
                return self._moment(v, f"{rtype}.{element}", at, tz), None, True
        period = res.get(prefix + "Period")
        if period is not None:
            loc = at.loc  # rare: the Location is built only here (see Item.loc)
            if not isinstance(period, dict):
                raise BadInput(f"{rtype}.{prefix}Period must be an object", loc)
            start = period.get("start")
            if start is None:
                raise BadInput(f"{rtype}.{prefix}Period has no start", loc)
            s = self._moment(start, f"{rtype}.{prefix}Period.start", at, tz)
            e = period.get("end")
            end = self._moment(e, f"{rtype}.{prefix}Period.end", at, tz) if e is not None else None
            if end is not None and end.at < s.at:
                raise BadInput(f"{rtype}.{prefix}Period ends before it starts", loc)
            return s, end, False
        return None

    def _medication(self, res: dict[str, Any], idx: InputIndex, at: Indexed) -> tuple[Any, list[str]]:
        """The medication's CodeableConcept and its texts, following medicationReference (also contained)."""
        rtype = res["resourceType"]
        cc = res.get("medicationCodeableConcept")
        if cc is not None:
            shape.codeable(cc, f"{rtype}.medicationCodeableConcept", at)
            return cc, texts_of(cc)
        ref = res.get("medicationReference")
        shape.obj(ref, f"{rtype}.medicationReference", at, "a Reference object")
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            target = ref["reference"]
            med: Any = None
            if target.startswith("#"):
                shape.objects(res.get("contained"), f"{rtype}.contained", at)
                med = next((c for c in res.get("contained") or [] if isinstance(c, dict)
                            and c.get("id") == target[1:]), None)
            else:
                found = idx.resolve(target)
                med = found.resource if found else None
                if found is not None:
                    self.medications_used.add(found.key)
            if not isinstance(med, dict):
                raise BadInput(f"medicationReference {target} is not in the input", at.loc)
            code = med.get("code")
            shape.codeable(code, "Medication.code", at)
            return code, texts_of(code) + ([ref["display"]] if isinstance(ref.get("display"), str) else [])
        if isinstance(ref, dict) and isinstance(ref.get("display"), str):
            return None, [ref["display"]]
        return None, []

    def _infusion(self, ent: Indexed, idx: InputIndex, data: PatientData) -> None:
        res, loc = ent.resource, ent.loc
        try:
            if res["resourceType"] == "MedicationAdministration":  # shapes checked once, when read as a drug
                if res.get("status") not in ("completed", "in-progress"):
                    return
                try:
                    cc, texts = self._medication(res, idx, ent)
                except BadInput:
                    return  # reported once, when the administration is read as a drug

                product = self.term.cart_product(cc, texts)
                if product is None:
                    return
                eff = self._effective(res, ent, UTC)
            else:
                shape.string(res.get("status"), "Procedure.status", ent)
                shape.codeable(res.get("code"), "Procedure.code", ent)
                if res.get("status") != "completed" or not self.term.is_cart_procedure(res.get("code")):
                    return
                product = self.term.cart_product(res.get("code"), texts_of(res.get("code"))) or "CAR-T cell product"
                eff = self._effective(res, ent, UTC, prefix="performed")
        except BadInput as err:
            self.report.error(err)
            return
        if eff is None:
            self.report.error(BadInput("CAR-T infusion has no effective time: day 0 cannot be set", loc))
            return
        data.infusions.append(Infusion(ref=ent.key, when=eff[0], product=product))

    def _ours(self, ent: Indexed) -> None:
        self.ours.append(ent.resource)
        self.report.ignored[f"{ent.resource['resourceType']} of cart-fhir's own (a result, not input)"] += 1

    def _resource(self, ent: Indexed, idx: InputIndex, data: PatientData, tz: timezone) -> None:
        rtype = ent.resource["resourceType"]
        if rtype in ("Condition", "AdverseEvent") and is_ours(ent.resource):  # (the index reads no other AE)
            self._ours(ent)
        elif rtype == "Observation":
            self._observation(ent, data, tz)
        elif rtype in ("MedicationAdministration", "MedicationStatement"):
            self._drug(ent, idx, data, tz)
        elif rtype == "Condition":
            self._attribution(ent, idx, data)
            self._condition(ent, data, tz)
        elif rtype == "Procedure":
            if any(i.ref == ent.key for i in data.infusions):
                self.report.resources_used += 1
            else:
                self.report.ignored["Procedure (not a CAR-T infusion)"] += 1

    # ---- Observations --------------------------------------------------------------------------

    def _observation(self, ent: Indexed, data: PatientData, tz: timezone) -> None:
        # One call per Observation the fast reader left to the extractor (or all of them with it off): no
        # Location is built unless a message needs one, and the usual shapes allocate nothing extra.
        res = ent.resource
        fast = ent.item
        if type(fast) is FastItem:  # read on the fast path (ingest/fast.py), not used (patient() takes the rest)
            assert fast.ignored is not None
            self.report.ignored[fast.ignored] += 1
            return
        if "identifier" in res and is_ours(res):  # (never a stand-in: the fast reader leaves ours to us)
            self._ours(ent)
            return
        status = res.get("status")
        if type(status) is not str or status not in OBS_USABLE:
            shape.string(status, "Observation.status", ent)
            self.report.ignored[f"Observation status {status}"] += 1
            return
        concept = self.term.concept(res.get("code"))
        if concept is None:  # a known code passed the fast lookup: only an unknown one can be malformed
            shape.codeable(res.get("code"), "Observation.code", ent)
        components = res.get("component")
        sub: list[tuple[ConceptRow, dict[str, Any]]] = []
        if components is not None:
            shape.objects(components, "Observation.component", ent)
            for i, c in enumerate(components):
                row = self.term.concept(c.get("code"))
                if row is None:
                    shape.codeable(c.get("code"), f"Observation.component[{i}].code", ent)
                elif row.kind != "panel":
                    sub.append((row, c))
        own = concept is not None and concept.kind != "panel"
        if not own and not sub:
            event = self.term.event(res.get("code")) if concept is None else None
            if event is not None and event[0] == "infections":
                self._microbiology(ent, data, tz, event)
                return
            self.report.ignored["Observation (code not used)"] += 1
            first = codings(res.get("code"))[:1]  # the shape was checked above
            self.report.unmapped_codes[f"{first[0].get('system')}|{first[0].get('code')}" if first
                                       else "(no coding)"] += 1
            return
        # Fast path: an effectiveDateTime already parsed for this patient, with its offset (vital signs share
        # timestamps): one dict lookup instead of _effective -> _moment (saves two calls per Observation).
        hit = self._moments.get((v, tz)) if type(v := res.get("effectiveDateTime")) is str else None
        if hit is not None and hit[1]:
            when = hit[0]
        else:
            eff = self._effective(res, ent, tz)
            if eff is None:
                self.report.ignored["Observation without effective time"] += 1
                self.report.warn("Observation has no effective[x]: not placed on a day, ignored", ent.loc)
                return
            when = eff[0]
        key = ent.key
        made = 0
        if own:
            assert concept is not None
            value = self.values.observation_value(res, concept, "Observation", ent)
            if value is not None:
                low, high = self.values.reference_range(res, concept, ent, self.report.warn) \
                    if concept.kind == "quantity" and "referenceRange" in res else (None, None)
                data.readings.append(Reading(concept.concept, when, value, key, key, low, high))
                made += 1
        for row, comp in sub:
            value = self.values.observation_value(comp, row, component_path(row.code), ent)
            if value is not None:
                data.readings.append(Reading(row.concept, when, value, key, key))
                made += 1
        if made:
            self.report.resources_used += 1
            if concept is not None and not concept.verified:
                self.report.unverified_rows.add(f"input-concepts:{concept.system}|{concept.code}")
            for row, _ in sub:
                if not row.verified:
                    self.report.unverified_rows.add(f"input-concepts:{row.system}|{row.code}")
        else:
            self.report.ignored["Observation without a value"] += 1

    def _microbiology(self, ent: Indexed, data: PatientData, tz: timezone, event: tuple[str, Any, str]) -> None:
        """A positive culture or PCR is an infection fact at the specimen time (grading.md 6.1); a negative
        or undecidable result is counted and ignored."""
        res, loc = ent.resource, ent.loc
        shape.codeables(res.get("interpretation"), "Observation.interpretation", ent)
        shape.codeable(res.get("valueCodeableConcept"), "Observation.valueCodeableConcept", ent)
        positive = microbiology_positive(res)
        if not positive:
            self.report.ignored["microbiology result negative or undecided"] += 1
            return
        eff = self._effective(res, ent, tz)
        if eff is None:
            self.report.warn("positive result has no effective[x]: not placed on a day, ignored", loc)
            self.report.ignored["Observation without effective time"] += 1
            return
        table, row, code = event
        attrs = tuple((k, str(v)) for k, v in msgspec.structs.asdict(row).items()
                      if k not in ("system", "code", "display", "verified", "source") and v is not None)
        data.conditions.append(ConditionFact(table, row.key, code, row.display, eff[0], None, ent.key, attrs))
        self.report.resources_used += 1

    # ---- medications and conditions ------------------------------------------------------------

    def _drug(self, ent: Indexed, idx: InputIndex, data: PatientData, tz: timezone) -> None:
        res, loc = ent.resource, ent.loc
        rtype = res["resourceType"]
        if any(i.ref == ent.key for i in data.infusions):
            self.report.resources_used += 1
            return
        status = res.get("status")
        shape.string(status, f"{rtype}.status", ent)
        statement = rtype == "MedicationStatement"
        if status not in (MS_USABLE if statement else MA_USABLE):
            self.report.ignored[f"{rtype} status {status}"] += 1
            return
        cc, texts = self._medication(res, idx, ent)
        row = self.term.drug(cc, texts)
        if row is None:
            self.report.ignored[f"{rtype} (drug not used)"] += 1
            return
        eff = self._effective(res, ent, tz)
        if eff is None:
            raise BadInput(f"{rtype} has no effective[x]", loc)
        start, end, instant = eff
        if end is None and not instant and status == "completed":
            end = start  # a completed administration with an open period: no evidence it ran on
        dosage = res.get("dosage")
        if statement:
            shape.objects(dosage, "MedicationStatement.dosage", ent)
        else:
            shape.obj(dosage, "MedicationAdministration.dosage", ent, "a Dosage object")
        if isinstance(dosage, dict):
            shape.codeable(dosage.get("route"), f"{rtype}.dosage.route", ent)
            shape.obj(dosage.get("dose"), f"{rtype}.dosage.dose", ent, "a Quantity object")
        shape.objects(res.get("reasonReference"), f"{rtype}.reasonReference", ent)
        shape.codeables(res.get("reasonCode"), f"{rtype}.reasonCode", ent)
        if statement and isinstance(dosage, list):
            dosage = dosage[0] if dosage else None  # MedicationStatement.dosage is a list of Dosage
        route, dose, dose_unit = None, None, None
        if isinstance(dosage, dict):
            for c in codings(dosage.get("route")):
                if isinstance(c.get("code"), str):
                    route = c["code"]
                    break
            q = dosage.get("dose")
            if statement and isinstance(dosage.get("doseAndRate"), list) and dosage["doseAndRate"]:
                q = dosage["doseAndRate"][0].get("doseQuantity") if isinstance(dosage["doseAndRate"][0], dict) else None
            if isinstance(q, dict) and isinstance(q.get("value"), (int, float)) \
                    and not isinstance(q.get("value"), bool):
                dose = float(q["value"])
                dose_unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
        reasons = tuple(idx.key_of(r["reference"]) for r in res.get("reasonReference") or []
                        if isinstance(r, dict) and isinstance(r.get("reference"), str))
        data.drugs.append(DrugAdmin(row.agent, row.role, start, end, instant, ent.key, route, dose, dose_unit,
                                    reasons, self._intent(res, row, reasons, statement), statement))
        self.report.resources_used += 1
        if not row.verified:
            self.report.unverified_rows.add(f"drug-roles:{row.agent}")

    @staticmethod
    def _intent(res: dict[str, Any], row: DrugRow, reasons: tuple[str, ...], statement: bool) -> str:
        """Prophylaxis or treatment: a stated reason decides; else a statement of a drug that is typically
        prophylactic is prophylaxis (grading.md 6.2 pitfall: prophylaxis is never read as treatment)."""
        reason_codes = res.get("reasonCode")
        if not isinstance(reason_codes, list):
            reason_codes = []
        words = " ".join(t for cc in reason_codes for t in texts_of(cc)).lower()
        cats = res.get("category")
        for cc in (cats if isinstance(cats, list) else [cats] if isinstance(cats, dict) else []):
            words += " " + " ".join(texts_of(cc)).lower()
            words += " " + " ".join(str(c.get("code", "")) for c in codings(cc)).lower()
        if "prophyla" in words or "prevent" in words:
            return "prophylaxis"
        if reasons or "treat" in words:
            return "treatment"
        if statement and row.typical_use == "prophylaxis":
            return "prophylaxis"
        return "unknown"

    def _attribution(self, ent: Indexed, idx: InputIndex, data: PatientData) -> None:
        """A clinician's Condition that lists findings in `evidence.detail` attributes them (README, Clinician
        attribution; grading.md decision 9): to the CAR-T course when it is coded as a CAR-T toxicity, else to
        the other cause it diagnoses. A refuted or entered-in-error Condition attributes nothing."""
        res = ent.resource
        details = [d["reference"] for ev in res.get("evidence") or [] if isinstance(ev, dict)
                   for d in ev.get("detail") or [] if isinstance(d, dict) and isinstance(d.get("reference"), str)]
        if not details:
            return
        ver = {c.get("code") for c in codings(res.get("verificationStatus"))}
        if ver & COND_EXCLUDED_VERIFICATION:
            return
        pairs = [(c.get("system"), str(c.get("code", ""))) for c in codings(res.get("code"))]
        related = any(s == CS_TOXICITY or (s == ICD10CM and c.startswith(CART_ICD10_PREFIXES)) for s, c in pairs)
        event = self.term.event(res.get("code"))
        display = (texts_of(res.get("code")) or [ent.key])[0]
        self._attributing.add(ent.key)
        for target in details:
            key = idx.key_of(target)
            if key == ent.key:
                continue
            prev = data.attributions.get(key)
            if prev is not None and prev.status == "other-cause":
                continue  # conflicting attributions: the other cause is kept (the finding is left out)
            data.attributions[key] = ClinicianAttribution(key, "car-t-related" if related else "other-cause",
                                                          ent.key, display, event[0] if event else None)
        self.report.resources_used += 1

    def _condition(self, ent: Indexed, data: PatientData, tz: timezone) -> None:
        res, loc = ent.resource, ent.loc
        for element in ("code", "verificationStatus", "severity"):
            shape.codeable(res.get(element), f"Condition.{element}", ent)
        shape.obj(res.get("onsetPeriod"), "Condition.onsetPeriod", ent, "a Period object")
        data.condition_codes[ent.key] = tuple(f"{c.get('system')}|{c.get('code')}" for c in codings(res.get("code")))
        finding = self.term.condition_finding(res.get("code"))
        event = None if finding is not None else self.term.event(res.get("code"))
        malignancy = self.term.malignancy(res.get("code")) if finding is None and event is None else None
        if finding is None and event is None and malignancy is None:
            finding = self.term.condition_finding_by_name(res.get("code"))  # e.g. "Paraparesis" (unverified)
            if finding is not None:
                self.report.unverified_rows.add(f"condition-findings:{finding.id}")
        if finding is None and event is None and malignancy is None:
            if ent.key not in self._attributing:
                self.report.ignored["Condition (code not used)"] += 1
            return
        ver = {c.get("code") for c in codings(res.get("verificationStatus"))}
        if ver & COND_EXCLUDED_VERIFICATION:
            self.report.ignored["Condition refuted or entered-in-error"] += 1
            return
        onset = res.get("onsetDateTime")
        if onset is None and isinstance(res.get("onsetPeriod"), dict):
            onset = res["onsetPeriod"].get("start")
        if onset is None:
            onset = res.get("recordedDate")
        if onset is None:
            self.report.warn("Condition has no onset time: not placed on a day, ignored", loc)
            self.report.ignored["Condition without onset"] += 1
            return
        when = self._moment(onset, "Condition.onset", ent, tz)
        self.report.resources_used += 1
        if finding is not None:
            data.readings.append(Reading(finding.concept, when, finding.value, ent.key, ent.key))
            return
        if malignancy is not None:
            mrow, mcode = malignancy
            abate = res.get("abatementDateTime")
            data.conditions.append(ConditionFact(
                MALIGNANCY_TABLE, mrow.id or mrow.lineage, mcode, " ".join(texts_of(res.get("code"))[:1]) or mcode,
                when, self._moment(abate, "Condition.abatementDateTime", ent, tz) if abate is not None else None,
                ent.key, (("lineage", mrow.lineage), ("row", mrow.id or ""))))
            if not mrow.verified:
                self.report.unverified_rows.add(f"{MALIGNANCY_TABLE}:{mrow.id}")
            return
        assert event is not None
        table, row, code = event
        abate = res.get("abatementDateTime")
        abatement = self._moment(abate, "Condition.abatementDateTime", ent, tz) if abate is not None else None
        severity = next((c.get("code") for c in codings(res.get("severity")) if isinstance(c.get("code"), str)),
                        None)
        attrs = tuple((k, str(v)) for k, v in msgspec.structs.asdict(row).items()
                      if k not in ("system", "code", "display", "verified", "source") and v is not None)
        data.conditions.append(ConditionFact(table, row.key, code, row.display, when, abatement, ent.key,
                                             attrs, severity))
        if not row.verified:
            self.report.unverified_rows.add(f"{table}:{row.key}")


def _label(patient: dict[str, Any]) -> str | None:
    """The MRN (identifier.type v2-0203 MR), else the first identifier value: the terminal table's label."""
    idents = [i for i in patient.get("identifier") or () if isinstance(i.get("value"), str) and i["value"]]
    mrn = next((i["value"] for i in idents if any(c.get("code") == "MR" for c in codings(i.get("type")))), None)
    return mrn or (idents[0]["value"] if idents else None)


# HL7 v3 ObservationInterpretation codes for a qualitative result (POS positive, DET detected; NEG, ND).
_POSITIVE_INTERPRETATION = frozenset({"POS", "DET", "A", "AA", "H", "HH"})
_NEGATIVE_INTERPRETATION = frozenset({"NEG", "ND", "N"})
_NEGATIVE_WORDS = ("negative", "not detected", "no growth", "none detected", "undetected", "no organism")


def microbiology_positive(res: dict[str, Any]) -> bool:
    """Does a culture / PCR / viral-load result show the organism? Interpretation first, then the value."""
    for cc in res.get("interpretation") or []:
        codes = {str(c.get("code", "")).upper() for c in codings(cc)}
        if codes & _NEGATIVE_INTERPRETATION:
            return False
        if codes & _POSITIVE_INTERPRETATION:
            return True
    if isinstance(res.get("valueBoolean"), bool):
        return bool(res["valueBoolean"])
    q = res.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), (int, float)) and not isinstance(q.get("value"), bool):
        return q["value"] > 0 and q.get("comparator") not in ("<", "<=")
    words = " ".join(texts_of(res.get("valueCodeableConcept")))
    if isinstance(res.get("valueString"), str):
        words += " " + res["valueString"]
    words = words.lower().strip()
    if not words:
        return False
    return not any(w in words for w in _NEGATIVE_WORDS)
