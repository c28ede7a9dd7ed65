"""Write a seeded synthetic cohort: per patient a FHIR R4 collection Bundle (or NDJSON per resource type),
and expected.json with each patient's scenario grades (the ground truth, not the grader's output).

Same seed, same bytes: one `random.Random(seed)` per patient stream, keys sorted, no wall clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .builder import build
from .choices import Format
from .longterm import draw_late, realise
from .longterm import expected as long_term_expected
from .noise import Noise, add_noise
from .scenario import Episode, Scenario, draw
from .sitecodes import concept_map, localise
from .table import SynthTable, load_synth_table

FHIR_DIR = "fhir"  # inputs under DIR/fhir/, so `cart-fhir grade DIR/fhir` never reads expected.json
CONCEPT_MAP = "conceptmap.json"


@dataclass(frozen=True, slots=True)
class Options:
    local_codes: bool = False  # site codes for some observations, mapped by DIR/conceptmap.json
    noise: Noise = Noise.NONE


DEFAULT_OPTIONS = Options()


def cohort(patients: int, seed: int, days: int, table: SynthTable | None = None,
           options: Options = Options()) -> Iterator[tuple[Scenario, list[dict[str, Any]]]]:
    """Each patient's scenario and resources. Patient i uses its own Random(seed, i): adding patients
    leaves the first ones unchanged; noise draws from its own stream, so it never changes the scenario."""
    table = table or load_synth_table()
    for i in range(1, patients + 1):
        rng = random.Random(f"{seed}:{i}")
        s = draw(rng, table, i, days)
        resources = add_noise(s, build(s, rng, days), options.noise, random.Random(f"{seed}:{i}:noise"))
        # IAGO long-term effects: their own stream, appended, so the draws and resources above are unchanged.
        late = draw_late(random.Random(f"{seed}:{i}:late"), table)
        if late is not None:
            resources += realise(s, late, len(resources))
            s = replace(s, late=late)
        if options.local_codes:  # after the noise, which picks observations by their LOINC code
            for r in resources:
                if r["resourceType"] == "Observation":
                    localise(r)
        yield s, resources


def dumps(doc: Any) -> bytes:
    """Compact JSON with sorted keys (orjson: the generator spends most of its time here at 100k patients)."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def expected_row(s: Scenario, days: int = 30) -> dict[str, Any]:
    def ep(e: Episode | None) -> dict[str, Any]:
        if e is None:
            return {"max_grade": 0, "onset_day": None}
        return {"max_grade": e.grade, "onset_day": e.onset_day, "peak_day": e.peak_day,
                "last_day": e.last_day, "resolution_day": e.last_day + 1}
    c, pressors = s.cytopenia, s.pressor_days
    return {"patient": s.pid, "product": s.product.product, "indication": s.product.indication,
            "trial_distribution": s.product.trial, "age": s.age, "day0": s.day0.isoformat(),
            "utc_offset": s.tz, "crs": ep(s.crs), "icans": ep(s.icans),
            "icaht_early": {"max_grade": c.early_grade, "anc_le_500_days": c.d500, "anc_le_100_days": c.d100},
            "icaht_late": {"max_grade": c.late_grade},
            "infections": [{"kind": i.kind, "key": i.key, "window": i.window, "onset_day": i.onset_day,
                            "last_day": i.last_day, "route": i.route, "grade": i.grade(pressors)}
                           for i in s.infections],
            "long_term": long_term_expected(s, s.late, days)}


def _unversioned(r: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (r.get("meta") or {}).items() if k != "versionId"}
    return r if "meta" not in r else {k: v for k, v in r.items() if k != "meta"} | ({"meta": meta} if meta else {})


def _bundle(s: Scenario, resources: list[dict[str, Any]], fmt: Format = Format.BUNDLE) -> dict[str, Any]:
    """A collection Bundle, or a transaction whose entries PUT each resource at its generated id (update as
    create, R4 http.html#upsert: the server keeps our ids, so references between the resources hold). A
    transaction may touch a resource once (R4 http.html#trules), so of noise's superseded versions (same id,
    meta.versionId 1 and 2) only the current one is put, without its versionId: servers number versions."""
    if fmt == Format.TRANSACTION:
        current = {(r["resourceType"], r["id"]): r for r in resources}  # the later version wins
        resources = [_unversioned(r) for r in resources if current[r["resourceType"], r["id"]] is r]
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"https://cart-fhir.org/synthetic/{r['resourceType']}/{r['id']}", "resource": r}
        for r in resources]
    if fmt == Format.TRANSACTION:
        for e in entries:
            e["request"] = {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}
    return {"resourceType": "Bundle", "id": s.pid, "type": "transaction" if fmt == Format.TRANSACTION
            else "collection", "entry": entries}


def write_cohort(out_dir: str | Path, patients: int, seed: int, days: int = 30,
                 fmt: Format = Format.BUNDLE, options: Options = Options()) -> list[dict[str, Any]]:
    """Write the cohort and expected.json under out_dir; return the expected rows."""
    out = Path(out_dir)
    fhir = out / FHIR_DIR
    fhir.mkdir(parents=True, exist_ok=True)
    table = load_synth_table()
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        # NDJSON streams one line per resource to its type's file: memory stays flat at 100k patients.
        files: dict[str, BinaryIO] = {}
        for s, resources in cohort(patients, seed, days, table, options):
            rows.append(expected_row(s, days))
            if fmt != Format.NDJSON:
                (fhir / f"{s.pid}.json").write_bytes(dumps(_bundle(s, resources, fmt)) + b"\n")
                continue
            for r in resources:
                rtype = r["resourceType"]
                if rtype not in files:
                    files[rtype] = stack.enter_context((fhir / f"{rtype}.ndjson").open("wb"))
                files[rtype].write(dumps(r) + b"\n")
    if options.local_codes:
        (out / CONCEPT_MAP).write_bytes(orjson.dumps(concept_map(), option=orjson.OPT_SORT_KEYS |
                                                     orjson.OPT_INDENT_2) + b"\n")
    meta = {"generator": "cart-fhir synth", "table": table.table, "table_version": table.version,
            "seed": seed, "patients": patients, "days": days, "format": fmt.value,
            "local_codes": options.local_codes, "noise": options.noise.value,
            "grades": "ASTCT 2019 CRS and ICANS max grade and onset day; EHA/EBMT ICAHT early (days 0-30) and "
                      "late (days 31-100) grade; infections with CTCAE v5 grade suggested from treatment "
                      "(grading.md 6.2) and onset day (day 0 = infusion day, calendar days in the patient's "
                      "UTC offset), from each patient's scenario; IAGO long-term effects (hypogammaglobulinemia, "
                      "B-cell aplasia, second malignancy, prolonged cytopenia after day 100) with onset day and "
                      "their key detail",
            "expected": rows}
    (out / "expected.json").write_text(json.dumps(meta, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    return rows
