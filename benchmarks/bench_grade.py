#!/usr/bin/env python3
"""Throughput benchmark of `cart-fhir grade` on a synthetic CAR-T cohort.

Generates a deterministic cohort (seeded ``random.Random``), serialises it as Bulk-Data style NDJSON (or one
collection Bundle), then times on the same bytes:

  (a) the baseline parse: ``orjson.loads`` of every NDJSON line (of the whole document for a Bundle);
  (b) the grading path the CLI runs, minus file I/O:
        result  = engine.grade(read_bytes(data, name))
        written = engine.resources(result, recorded)
        payload = orjson.dumps(engine.bundle(written), option=OPT_INDENT_2 | OPT_APPEND_NEWLINE)

Best of ``--repeat`` runs each. The Engine is built once, outside the timed region (its start-up is reported
separately). The project goal is grading <= 5x the orjson parse time of the same bytes.

    python benchmarks/bench_grade.py --patients 1000 --days 30 --seed 1 [--repeat 3]
        [--format ndjson|bundle] [--write-cohort DIR] [--json FILE] [--profile]

This file deliberately does not import tests/ (the generator below is self-contained).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import os
import platform
import pstats
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

import cart_fhir

# ---- codes (shared/spec/input-contract.md) ------------------------------------------------------------

BASE = "https://cart-fhir.org/fhir"
CART_OBS = f"{BASE}/CodeSystem/cart-observation"
O2_DEVICE_CS = f"{BASE}/CodeSystem/oxygen-delivery"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
SERVER = "https://ehr.example.org/fhir"  # fullUrl base in --format bundle

TZ = "-05:00"  # every patient's fixed, non-UTC offset: day boundaries differ from UTC ones
DAY0_FROM = date(2024, 1, 1)

RX = {"norepinephrine": "7512", "epinephrine": "3992", "phenylephrine": "8163", "vasopressin": "11149",
      "tocilizumab": "612865", "dexamethasone": "3264", "acetaminophen": "161"}

VITAL_HOURS = (2, 6, 10, 14, 18, 22)  # temperature, BP panel, SpO2: every 4 h
DEVICE_HOURS = (4, 12, 20)  # oxygen device (and flow unless room air): every 8 h
ICE_HOURS = (8, 20)  # ICE twice a day
LAB_HOUR = 5  # CRP, ferritin, ANC once a day

# Pre-built code blocks (shared, immutable while serialising: orjson writes them as often as referenced).
_VITAL_CAT = [{"coding": [{"system": OBS_CAT, "code": "vital-signs", "display": "Vital Signs"}]}]
_LAB_CAT = [{"coding": [{"system": OBS_CAT, "code": "laboratory", "display": "Laboratory"}]}]
_SURVEY_CAT = [{"coding": [{"system": OBS_CAT, "code": "survey", "display": "Survey"}]}]
_TEMP_CODE = {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]}
_BP_CODE = {"coding": [{"system": LOINC, "code": "85354-9",
                        "display": "Blood pressure panel with all children optional"}]}
_SBP_CODE = {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]}
_DBP_CODE = {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]}
_SPO2_CODE = {"coding": [{"system": LOINC, "code": "59408-5",
                          "display": "Oxygen saturation in Arterial blood by Pulse oximetry"}]}
_FLOW_CODE = {"coding": [{"system": LOINC, "code": "3151-8", "display": "Inhaled oxygen flow rate"}]}
_DEVICE_CODE = {"coding": [{"system": CART_OBS, "code": "oxygen-delivery-device"}]}
_ICE_CODE = {"coding": [{"system": CART_OBS, "code": "ice-score"}]}
_LABS = (  # (id prefix, code, display, UCUM unit)
    ("crp", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L"),
    ("ferritin", "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL"),
    ("anc", "751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*3/uL"),
)
_LAB_CODES = {p: {"coding": [{"system": LOINC, "code": c, "display": d}]} for p, c, d, _ in _LABS}
_CART_MED = {"coding": [{"system": RXNORM, "code": "1987402", "display": "axicabtagene ciloleucel"}],
             "text": "Yescarta (axicabtagene ciloleucel) suspension for IV infusion"}
_DRUG_MED = {agent: {"coding": [{"system": RXNORM, "code": code, "display": agent}]} for agent, code in RX.items()}


# ---- the synthetic cohort -------------------------------------------------------------------------------

@dataclass(slots=True)
class Plan:
    """What the generator put in for one patient (the intended ASTCT grade, for a sanity check only)."""

    crs_grade: int = 0  # 0 = no CRS course
    icans_grade: int = 0  # 0 = no ICANS course


@dataclass(slots=True)
class Cohort:
    data: bytes
    name: str  # the name given to read_bytes (".ndjson" selects the NDJSON reader)
    patients: int
    resources: int
    by_type: Counter[str]
    plans: dict[str, Plan] = field(default_factory=dict)


class PatientGen:
    """One synthetic patient: resources as dicts, timed relative to day 0 in the patient's offset."""

    def __init__(self, index: int, rng: random.Random, days: int) -> None:
        self.rng = rng
        self.days = days
        self.pid = f"bench-{index:06d}"
        self.subject = {"reference": f"Patient/{self.pid}"}
        self.day0 = DAY0_FROM + timedelta(days=rng.randrange(366))
        self.dates = [(self.day0 + timedelta(days=d)).isoformat() for d in range(days + 3)]
        self.n = 0
        self.out: list[dict[str, Any]] = []
        self.plan = Plan()

    # ---- helpers --------------------------------------------------------------------------------

    def at(self, day: int, hour: int, minute: int = 0) -> str:
        day += hour // 24
        return f"{self.dates[day]}T{hour % 24:02d}:{minute:02d}:00{TZ}"

    def jitter(self) -> int:
        return self.rng.randrange(30)

    def nid(self, prefix: str) -> str:
        self.n += 1
        return f"{self.pid}-{prefix}-{self.n}"

    def obs(self, prefix: str, category: list[Any], code: dict[str, Any], when: str, **value: Any) -> None:
        self.out.append({"resourceType": "Observation", "id": self.nid(prefix), "status": "final",
                         "category": category, "code": code, "subject": self.subject,
                         "effectiveDateTime": when, **value})

    @staticmethod
    def qty(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
        return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}

    def drug(self, agent: str, start: str, end: str | None = None, dose: tuple[float, str] | None = None) -> None:
        res: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": self.nid(agent[:6]),
                               "status": "completed", "medicationCodeableConcept": _DRUG_MED[agent],
                               "subject": self.subject}
        if end is None:
            res["effectiveDateTime"] = start
        else:
            res["effectivePeriod"] = {"start": start, "end": end}
        if dose is not None:
            res["dosage"] = {"dose": self.qty(dose[0], dose[1])}
        self.out.append(res)

    # ---- the patient ----------------------------------------------------------------------------

    def build(self) -> list[dict[str, Any]]:
        rng, days = self.rng, self.days
        birth = date(1945, 1, 1) + timedelta(days=rng.randrange(60 * 365))  # adults: ICE, not CAPD
        self.out.append({"resourceType": "Patient", "id": self.pid,
                         "identifier": [{"system": "https://example.org/mrn", "value": f"MRN-{self.pid}"}],
                         "gender": rng.choice(("female", "male")), "birthDate": birth.isoformat()})
        inf_h, inf_m = rng.randint(9, 13), rng.randrange(60)
        self.out.append({"resourceType": "MedicationAdministration", "id": self.nid("cart"), "status": "completed",
                         "medicationCodeableConcept": _CART_MED, "subject": self.subject,
                         "effectiveDateTime": self.at(0, inf_h, inf_m)})

        # -- CRS course (~40%): fever >= 38 for 2-6 days from day 1-5; O2 / pressors / tocilizumab sometimes
        fever_days: set[int] = set()
        o2: dict[int, tuple[str, float]] = {}  # day -> (device, L/min)
        low_bp: list[tuple[int, int, int, int]] = []  # (day, hour) from .. to, SBP < 90
        has_crs = rng.random() < 0.40
        if has_crs:
            onset, length = rng.randint(1, 5), rng.randint(2, 6)
            fever_days = {d for d in range(onset, onset + length) if d < days}
            severity = rng.random()
            grade = 1
            if severity >= 0.55 and len(fever_days) >= 2:
                d1 = onset + 1 if onset + 1 in fever_days else onset
                span = [d for d in range(d1, d1 + rng.randint(1, 3)) if d in fever_days]
                if severity < 0.80:  # grade 2: low-flow nasal cannula
                    for d in span:
                        o2[d] = ("nasal-cannula", float(rng.randint(1, 6)))
                    grade = 2
                elif severity < 0.92:  # grade 3: one vasopressor, or a simple face mask
                    if rng.random() < 0.5:
                        for d in span:
                            o2[d] = ("simple-face-mask", float(rng.randint(6, 10)))
                    else:
                        low_bp.append(self._pressors(d1, ["norepinephrine"]))
                    grade = 3
                else:  # grade 4: two vasopressors at once (norepinephrine + phenylephrine)
                    low_bp.append(self._pressors(d1, ["norepinephrine", "phenylephrine"]))
                    for d in span:
                        o2[d] = ("nasal-cannula", float(rng.randint(2, 6)))
                    grade = 4
            self.plan.crs_grade = grade if fever_days else 0
            if fever_days and (grade >= 2 and rng.random() < 0.8 or rng.random() < 0.2):
                d = min(fever_days) + (1 if len(fever_days) > 1 else 0)
                self.drug("tocilizumab", self.at(d, rng.randint(10, 20), rng.randrange(60)), dose=(8.0, "mg/kg"))

        # -- ICANS course (~20% overall, likelier after CRS): ICE 2-8 for a few days
        ice_low: dict[int, int] = {}  # day -> nadir that day
        if rng.random() < (0.35 if has_crs else 0.10):
            start = rng.randint(3, 8)
            length = rng.randint(2, 5)
            nadir = rng.randint(2, 8)
            for k, d in enumerate(range(start, start + length)):
                if d < days:
                    # deepest in the middle of the course
                    ice_low[d] = min(9, nadir + abs(k - length // 2))
            if ice_low:
                worst = min(ice_low.values())
                self.plan.icans_grade = 3 if worst <= 2 else 2 if worst <= 6 else 1
                if worst <= 6 and rng.random() < 0.7:
                    d = min(d for d, v in ice_low.items() if v <= 6)
                    for k in range(rng.randint(2, 6)):  # dexamethasone 10 mg every 6 h
                        self.drug("dexamethasone", self.at(d, 10 + 6 * k), dose=(10.0, "mg"))

        # -- vital signs every 4 h, SpO2, the oxygen device every 8 h, ICE twice a day, daily labs
        crs_peak = max(fever_days) if fever_days else None
        for d in range(days):
            febrile = d in fever_days
            hot = set(rng.sample(range(len(VITAL_HOURS)), rng.randint(2, 5))) if febrile else set()
            if febrile and rng.random() < 0.5:
                self.drug("acetaminophen", self.at(d, rng.choice(VITAL_HOURS), 15), dose=(650.0, "mg"))
            device, flow = o2.get(d, ("room-air", 0.0))
            for k, h in enumerate(VITAL_HOURS):
                when = self.at(d, h, self.jitter())
                t = round(rng.uniform(38.0, 40.2), 1) if k in hot else (
                    round(rng.uniform(37.2, 37.9), 1) if febrile else round(rng.uniform(36.2, 37.4), 1))
                self.obs("temp", _VITAL_CAT, _TEMP_CODE, when, valueQuantity=self.qty(t, "Cel"))
                hypo = any(self._in(d, h, span) for span in low_bp)
                sbp = rng.randint(76, 88) if hypo else rng.randint(100, 138)
                dbp = rng.randint(40, 55) if hypo else rng.randint(58, 85)
                self.obs("bp", _VITAL_CAT, _BP_CODE, when, component=[
                    {"code": _SBP_CODE, "valueQuantity": self.qty(sbp, "mmHg", "mm[Hg]")},
                    {"code": _DBP_CODE, "valueQuantity": self.qty(dbp, "mmHg", "mm[Hg]")}])
                spo2 = rng.randint(89, 95) if device != "room-air" else rng.randint(94, 100)
                self.obs("spo2", _VITAL_CAT, _SPO2_CODE, when, valueQuantity=self.qty(spo2, "%"))
            for h in DEVICE_HOURS:
                when = self.at(d, h, self.jitter())
                self.obs("o2dev", _SURVEY_CAT, _DEVICE_CODE, when, valueCodeableConcept={
                    "coding": [{"system": O2_DEVICE_CS, "code": device}]})
                if device != "room-air":
                    self.obs("o2flow", _VITAL_CAT, _FLOW_CODE, when, valueQuantity=self.qty(flow, "L/min"))
            for k, h in enumerate(ICE_HOURS):
                score = 10  # any 7-9 is ICANS grade 1 under ASTCT, so the baseline stays at 10
                if d in ice_low:
                    score = ice_low[d] if k == 0 else min(10, ice_low[d] + rng.randint(0, 1))
                self.obs("ice", _SURVEY_CAT, _ICE_CODE, self.at(d, h, self.jitter()), valueInteger=score)
            when = self.at(d, LAB_HOUR, self.jitter())
            inflamed = crs_peak is not None and min(fever_days) <= d <= crs_peak + 2
            crp = rng.uniform(40, 250) if inflamed else rng.uniform(1, 15)
            ferritin = rng.uniform(1500, 12000) if inflamed else rng.uniform(200, 900)
            anc = rng.uniform(0.0, 0.5) if 3 <= d <= 14 else rng.uniform(0.8, 4.0)
            for (prefix, _, _, unit), v in zip(_LABS, (round(crp, 1), round(ferritin), round(anc, 2)), strict=True):
                self.obs(prefix, _LAB_CAT, _LAB_CODES[prefix], when, valueQuantity=self.qty(v, unit))
        return self.out

    def _pressors(self, day: int, agents: list[str]) -> tuple[int, int, int, int]:
        """Vasopressors running together from `day` for 6-36 h; returns the hypotensive span."""
        start_h = self.rng.choice(VITAL_HOURS) - 1
        hours = self.rng.randint(6, 36)
        end_day, end_h = day + (start_h + hours) // 24, (start_h + hours) % 24
        for agent in agents:
            self.drug(agent, self.at(day, start_h, 30), self.at(end_day, end_h, 30))
        return day, start_h, end_day, end_h

    @staticmethod
    def _in(day: int, hour: int, span: tuple[int, int, int, int]) -> bool:
        d0, h0, d1, h1 = span
        return (d0, h0) <= (day, hour) <= (d1, h1)


def generate(patients: int, days: int, seed: int, fmt: str) -> Cohort:
    """The cohort as bytes. NDJSON is grouped by resource type, as a Bulk Data export writes its files."""
    # One buffer per type, not a list of small bytes: every orjson.dumps result keeps a multi-KiB
    # allocation behind it, and 800k of them would cost ~8x the cohort's size in RSS.
    types = ("Patient", "MedicationAdministration", "Observation")
    bufs = {t: io.BytesIO() for t in types}
    counts: Counter[str] = Counter()
    plans: dict[str, Plan] = {}
    sep = b"," if fmt == "bundle" else b"\n"
    server = SERVER.encode()
    for i in range(patients):
        rng = random.Random(f"cart-fhir-bench:{seed}:{i}")  # per-patient stream: patient i is N-independent
        gen = PatientGen(i, rng, days)
        for res in gen.build():
            rtype = res["resourceType"]
            buf = bufs[rtype]
            if counts[rtype]:
                buf.write(sep)
            counts[rtype] += 1
            if fmt == "bundle":
                buf.write(b'{"fullUrl":"%s/%s/%s","resource":' % (server, rtype.encode(), res["id"].encode()))
                buf.write(orjson.dumps(res))
                buf.write(b"}")
            else:
                buf.write(orjson.dumps(res))
        plans[gen.pid] = gen.plan
    parts = [bufs[t].getvalue() for t in types if counts[t]]
    del bufs
    if fmt == "bundle":
        data = b'{"resourceType":"Bundle","type":"collection","entry":[' + b",".join(parts) + b"]}\n"
        name = "cohort.json"
    else:
        data = b"\n".join(parts) + b"\n"
        name = "cohort.ndjson"
    return Cohort(data, name, patients, sum(counts.values()), counts, plans)


# ---- measurement ---------------------------------------------------------------------------------------

class GcTimer:
    """Wall time spent in the cyclic garbage collector (gc.callbacks), a cost cProfile does not show."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = 0
        self.by_generation = [[0, 0.0] for _ in range(3)]  # [collections, seconds] for gen 0, 1, 2
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            dt = time.perf_counter() - self._t
            self.total += dt
            self.collections += 1
            g = self.by_generation[min(int(info.get("generation", 0)), 2)]
            g[0] += 1
            g[1] += dt

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self)


def baseline_parse(data: bytes, fmt: str) -> int:
    if fmt == "bundle":
        return len(orjson.loads(data)["entry"])
    n = 0
    for line in data.split(b"\n"):
        if line:
            orjson.loads(line)
            n += 1
    return n


RECORDED = datetime(2025, 1, 1, tzinfo=UTC)  # fixed run time: identical output bytes every run


def grading_pass(engine: Any, cohort: Cohort) -> dict[str, Any]:
    """One CLI-equivalent pass (no file I/O); returns stage times and the objects for checking."""
    from cart_fhir.ingest.read import read_bytes

    t0 = time.perf_counter()
    result = engine.grade(read_bytes(cohort.data, cohort.name))
    t1 = time.perf_counter()
    written = engine.resources(result, RECORDED)
    t2 = time.perf_counter()
    payload = orjson.dumps(engine.bundle(written), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    t3 = time.perf_counter()
    return {"total": t3 - t0, "grade": t1 - t0, "resources": t2 - t1, "bundle_dumps": t3 - t2,
            "result": result, "written": written, "payload": payload}


def max_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def source_fingerprint() -> str:
    """sha256 (12 hex) of the adapter's .py files and the mapping tables, as read now: ties figures to code."""
    pkg = Path(cart_fhir.__file__).resolve().parent
    files = sorted(pkg.rglob("*.py"))
    for maps in (pkg.parent.parent / "mappings", pkg / "_data" / "mappings"):
        if maps.is_dir():
            files += sorted(f for f in maps.rglob("*") if f.is_file())
            break
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(pkg.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def current_rss_mb() -> float | None:
    """Resident set size now (Linux /proc), to tell the grader's share of the peak from the input's."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024
    except (OSError, ValueError, IndexError):
        return None


def sanity(result: Any, plans: dict[str, Plan]) -> dict[str, Any]:
    """Planned vs graded maximum grade per patient (a smoke check that the cohort exercises the graders)."""
    from cart_fhir.grading.result import Toxicity

    graded: dict[str, dict[str, int]] = {}
    for pr in result.patients:
        g = graded.setdefault(pr.patient.id, {"crs": 0, "icans": 0})
        for cr in pr.courses:
            for tox in (Toxicity.CRS, Toxicity.ICANS):
                for ep in cr.episodes[tox]:
                    g[tox.value] = max(g[tox.value], ep.max_grade)
    out: dict[str, Any] = {}
    for tox in ("crs", "icans"):
        planned = Counter(getattr(p, f"{tox}_grade") for p in plans.values())
        got = Counter(graded.get(pid, {}).get(tox, 0) for pid in plans)
        agree = sum(1 for pid, p in plans.items() if graded.get(pid, {}).get(tox, 0) == getattr(p, f"{tox}_grade"))
        out[tox] = {"planned": dict(sorted(planned.items())), "graded": dict(sorted(got.items())),
                    "agree": agree, "patients": len(plans)}
    return out


def run_profile(engine: Any, cohort: Cohort, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    p = grading_pass(engine, cohort)
    prof.disable()
    del p
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    buf.write("\n---- by own time (tottime) ----\n")
    stats.sort_stats("tottime").print_stats(15)
    return buf.getvalue()


# ---- CLI -----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed runs (default 3)")
    ap.add_argument("--format", choices=("ndjson", "bundle"), default="ndjson")
    ap.add_argument("--write-cohort", metavar="DIR",
                    help="also write the cohort to DIR/cohort.ndjson (DIR/cohort.json with --format bundle)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed runs, cProfile one grading pass; print the top 25 by cumulative time")
    args = ap.parse_args(argv)
    if args.patients < 1 or args.days < 1 or args.repeat < 1:
        ap.error("--patients, --days and --repeat must be >= 1")

    import cart_fhir
    from cart_fhir.errors import InputErrors
    from cart_fhir.pipeline import Engine

    fingerprint = source_fingerprint()  # the modules were imported just now: this is the code measured

    t = time.perf_counter()
    cohort = generate(args.patients, args.days, args.seed, args.format)
    gen_s = time.perf_counter() - t
    mb = len(cohort.data) / 1e6
    print(f"generated {cohort.patients} patients x {args.days} days: {cohort.resources} resources, "
          f"{mb:.1f} MB {args.format} in {gen_s:.1f} s  ({dict(cohort.by_type)})", file=sys.stderr)
    if args.write_cohort:
        out = Path(args.write_cohort) / cohort.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(cohort.data)
        print(f"wrote {out}", file=sys.stderr)
    rss_input = max_rss_mb()

    t = time.perf_counter()
    engine = Engine()
    startup_s = time.perf_counter() - t

    gc.collect()
    rss_before = current_rss_mb()
    parse_times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        n = baseline_parse(cohort.data, args.format)
        parse_times.append(time.perf_counter() - t)
        assert n == cohort.resources, (n, cohort.resources)
    gc.collect()

    runs: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for i in range(args.repeat):
        last = {}
        gc.collect()
        try:
            with GcTimer() as gct:
                p = grading_pass(engine, cohort)
        except InputErrors as exc:
            print(f"grading failed with {len(exc.errors)} input error(s), first: {exc.errors[:5]}", file=sys.stderr)
            return 1
        p["gc"], p["gc_collections"] = gct.total, gct.collections
        p["gc_by_generation"] = [[n, round(t, 3)] for n, t in gct.by_generation]
        p["output_sha256"] = hashlib.sha256(p["payload"]).hexdigest()[:16]  # outside the timed region
        print(f"  run {i + 1}: grading {p['total']:.2f} s (grade {p['grade']:.2f}, resources {p['resources']:.2f}, "
              f"bundle+dumps {p['bundle_dumps']:.2f}; cyclic GC {gct.total:.2f} s in {gct.collections} "
              f"collections; gen2: {gct.by_generation[2][0]} taking "
              f"{gct.by_generation[2][1]:.2f} s)", file=sys.stderr)
        runs.append({k: p[k] for k in ("total", "grade", "resources", "bundle_dumps", "gc", "gc_collections",
                                           "gc_by_generation", "output_sha256")})
        last = p
        del p
    best = min(runs, key=lambda r: r["total"])
    deterministic = len({r["output_sha256"] for r in runs}) == 1
    result, written, payload = last["result"], last["written"], last["payload"]
    report = result.report
    check = sanity(result, cohort.plans)
    out_types = Counter(w.resource["resourceType"] for w in written)
    rss_peak = max_rss_mb()
    parse_s, grade_s = min(parse_times), best["total"]

    figures = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "orjson": orjson.__version__, "cart_fhir": cart_fhir.__version__,
                    "adapter_sources_sha256": fingerprint},
        "params": {"patients": args.patients, "days": args.days, "seed": args.seed, "repeat": args.repeat,
                   "format": args.format},
        "input": {"mb": round(mb, 2), "resources": cohort.resources, "patients": cohort.patients,
                  "by_type": dict(cohort.by_type)},
        "engine_startup_s": round(startup_s, 4),
        "parse_s": round(parse_s, 4),
        "grading_s": round(grade_s, 4),
        "grading_stages_s": {k: round(best[k], 4) for k in ("grade", "resources", "bundle_dumps", "gc")},
        "patients_per_s": round(cohort.patients / grade_s, 1),
        "resources_per_s": round(cohort.resources / grade_s, 1),
        "ratio_grading_to_parse": round(grade_s / parse_s, 2),
        "goal_ratio": 5.0,
        "output": {"resources": len(written), "by_type": dict(out_types), "mb": round(len(payload) / 1e6, 2),
                   "identical_across_runs": deterministic},
        "report": {"patients_graded": report.patients_graded, "resources_used": report.resources_used,
                   "errors": len(report.errors), "warnings": len(report.warnings),
                   "ignored": dict(report.ignored)},
        "sanity": check,
        "peak_rss_mb": {"after_generating_input": round(rss_input, 1), "overall": round(rss_peak, 1)},
        "rss_before_timed_runs_mb": round(rss_before, 1) if rss_before is not None else None,
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
    }
    del last, result, written, payload

    rows = [
        ("code", f"cart-fhir {cart_fhir.__version__}, package+mappings sha256 {fingerprint}"),
        ("input", f"{mb:.1f} MB {args.format}, {cohort.resources:,} resources, {cohort.patients:,} patients"),
        ("engine start-up", f"{startup_s:.3f} s (not timed below)"),
        ("baseline parse (orjson)", f"{parse_s:.3f} s   (best of {args.repeat})"),
        ("grading (CLI path)", f"{grade_s:.3f} s   (best of {args.repeat}; grade {best['grade']:.2f} + "
                               f"resources {best['resources']:.2f} + bundle/dumps {best['bundle_dumps']:.2f}; "
                               f"cyclic GC {best['gc']:.2f} of it)"),
        ("patients/s", f"{cohort.patients / grade_s:,.1f}"),
        ("resources/s", f"{cohort.resources / grade_s:,.0f}"),
        ("ratio grading/parse", f"{grade_s / parse_s:.1f}x   (goal <= 5x)"),
        ("output resources", f"{figures['output']['resources']:,}  "
                             f"({', '.join(f'{k} {v}' for k, v in out_types.items())}; "
                             f"{figures['output']['mb']:.1f} MB; identical bytes across runs: "
                             f"{'yes' if deterministic else 'NO'})"),
        ("run report", f"{report.patients_graded} patients graded, {len(report.errors)} errors, "
                       f"{len(report.warnings)} warnings"),
        ("peak RSS", f"{rss_peak:,.0f} MB  (peak while generating the input: {rss_input:,.0f} MB; "
                     f"resident before the timed runs: "
                     f"{'?' if rss_before is None else f'{rss_before:,.0f}'} MB)"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print("\nsanity (max grade per patient, planned by the generator vs graded):")
    for tox, c in check.items():
        print(f"  {tox:5s} planned {c['planned']}  graded {c['graded']}  agree {c['agree']}/{c['patients']}")

    if args.profile:
        gc.collect()
        print("\ncProfile of one grading pass (profiler overhead inflates the times):\n")
        print(run_profile(engine, cohort))

    if args.json:
        Path(args.json).write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                                                 | orjson.OPT_NON_STR_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
