"""Write a seeded synthetic cohort: per patient a FHIR R4 collection Bundle (or NDJSON per resource type),
and expected.json with each patient's scenario grades (the ground truth, not the grader's output).

Same seed, same bytes: one `random.Random(seed)` per patient stream, keys sorted, no wall clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from .builder import build
from .scenario import Episode, Scenario, draw
from .table import SynthTable, load_synth_table

FHIR_DIR = "fhir"  # inputs under DIR/fhir/, so `cart-fhir grade DIR/fhir` never reads expected.json


class Format(str, Enum):
    BUNDLE = "bundle"
    NDJSON = "ndjson"


def cohort(patients: int, seed: int, days: int,
           table: SynthTable | None = None) -> Iterator[tuple[Scenario, list[dict[str, Any]]]]:
    """Each patient's scenario and resources. Patient i uses its own Random(seed, i): adding patients
    leaves the first ones unchanged."""
    table = table or load_synth_table()
    for i in range(1, patients + 1):
        rng = random.Random(f"{seed}:{i}")
        s = draw(rng, table, i, days)
        yield s, build(s, rng, days)


def dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def expected_row(s: Scenario) -> dict[str, Any]:
    def ep(e: Episode | None) -> dict[str, Any]:
        if e is None:
            return {"max_grade": 0, "onset_day": None}
        return {"max_grade": e.grade, "onset_day": e.onset_day, "peak_day": e.peak_day,
                "last_day": e.last_day, "resolution_day": e.last_day + 1}
    return {"patient": s.pid, "product": s.product.product, "indication": s.product.indication,
            "trial_distribution": s.product.trial, "age": s.age, "day0": s.day0.isoformat(),
            "utc_offset": s.tz, "crs": ep(s.crs), "icans": ep(s.icans)}


def write_cohort(out_dir: str | Path, patients: int, seed: int, days: int = 30,
                 fmt: Format = Format.BUNDLE) -> list[dict[str, Any]]:
    """Write the cohort and expected.json under out_dir; return the expected rows."""
    out = Path(out_dir)
    fhir = out / FHIR_DIR
    fhir.mkdir(parents=True, exist_ok=True)
    table = load_synth_table()
    rows: list[dict[str, Any]] = []
    by_type: dict[str, list[str]] = {}
    for s, resources in cohort(patients, seed, days, table):
        rows.append(expected_row(s))
        if fmt == Format.BUNDLE:
            bundle = {"resourceType": "Bundle", "id": s.pid, "type": "collection",
                      "entry": [{"fullUrl": f"https://cart-fhir.org/synthetic/{r['resourceType']}/{r['id']}",
                                 "resource": r} for r in resources]}
            (fhir / f"{s.pid}.json").write_text(dumps(bundle) + "\n", encoding="utf-8")
        else:
            for r in resources:
                by_type.setdefault(r["resourceType"], []).append(dumps(r))
    for rtype in sorted(by_type):
        (fhir / f"{rtype}.ndjson").write_text("\n".join(by_type[rtype]) + "\n", encoding="utf-8")
    meta = {"generator": "cart-fhir synth", "table": table.table, "table_version": table.version,
            "seed": seed, "patients": patients, "days": days, "format": fmt.value,
            "grades": "ASTCT 2019 CRS and ICANS max grade and onset day (day 0 = infusion day, calendar days "
                      "in the patient's UTC offset), from each patient's scenario",
            "expected": rows}
    (out / "expected.json").write_text(json.dumps(meta, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    return rows
