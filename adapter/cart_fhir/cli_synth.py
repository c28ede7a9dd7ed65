"""`cart-fhir synth --patients N --seed S -o DIR`: a seeded synthetic CAR-T cohort and its expected grades;
`cart-fhir synth --check DIR`: grade DIR/fhir and compare with DIR/expected.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .errors import AdapterError, ConfigError
from .ingest.read import read_paths
from .pipeline import Engine
from .synth.choices import Format, Noise

if TYPE_CHECKING:  # the generator, its table and models are imported by the synth command only
    from .synth.generate import Options


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    syn = sub.add_parser("synth", help="generate synthetic CAR-T patients (FHIR R4) with their expected grades",
                         description="Seeded synthetic CAR-T patients as FHIR R4 (DIR/fhir/) and the scenario's "
                                     "expected CRS, ICANS, ICAHT and infection grades (DIR/expected.json). Same "
                                     "seed, same bytes. With --check DIR: grade DIR/fhir and compare with "
                                     "DIR/expected.json (exit 0 when they agree, 1 when not).")
    syn.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.add_argument("-o", "--out", metavar="DIR", help="output folder")
    syn.add_argument("--format", choices=[f.value for f in Format], default="bundle",
                     help="one collection Bundle per patient (default), NDJSON per resource type, or one "
                          "transaction Bundle per patient whose entries PUT Type/id (seeds a sandbox server: "
                          "POST each file to its base URL)")
    syn.add_argument("--days", type=int, default=30, help="days of vital signs after the infusion (default 30)")
    syn.add_argument("--local-codes", action="store_true",
                     help="site-local codes for some observations, mapped by DIR/conceptmap.json")
    syn.add_argument("--noise", choices=[n.value for n in Noise], default="none",
                     help="missing days, other units, duplicate, entered-in-error and superseded observations "
                          "(never changing a true grade; default none)")
    syn.add_argument("--check", metavar="DIR",
                     help="grade DIR/fhir (with DIR/conceptmap.json when present) and compare with "
                          "DIR/expected.json; one line per disagreement")


def run(args: argparse.Namespace) -> int:
    if args.check:
        if args.out:
            sys.stderr.write("cart-fhir: error: give -o DIR (generate) or --check DIR, not both\n")
            return 2
        return check_command(args.check)
    if not args.out:
        sys.stderr.write("cart-fhir: error: synth needs -o DIR (or --check DIR)\n")
        return 2
    from .synth.generate import Options

    return synth_command(args.patients, args.seed, args.out, args.format, args.days,
                         Options(args.local_codes, Noise(args.noise)))


def synth_command(patients: int, seed: int, out_dir: str, fmt: str, days: int,
                  options: Options | None = None) -> int:
    """Write DIR/fhir/ (bundles or NDJSON) and DIR/expected.json; 0 done, 2 bad arguments or unwritable."""
    from .synth.generate import DEFAULT_OPTIONS, FHIR_DIR, write_cohort

    if patients < 1 or days < 7:
        sys.stderr.write("cart-fhir: error: synth needs --patients >= 1 and --days >= 7\n")
        return 2
    try:
        rows = write_cohort(out_dir, patients, seed, days, Format(fmt), options or DEFAULT_OPTIONS)
    except ValueError:
        sys.stderr.write(f"cart-fhir: error: --format must be one of {[f.value for f in Format]}\n")
        return 2
    except (OSError, ConfigError) as exc:
        sys.stderr.write(f"cart-fhir: error: {out_dir}: {exc}\n")
        return 2
    crs = sum(1 for r in rows if r["crs"]["max_grade"])
    icans = sum(1 for r in rows if r["icans"]["max_grade"])
    infections = sum(len(r["infections"]) for r in rows)
    sys.stderr.write(f"cart-fhir: wrote {len(rows)} patients ({fmt}) to {out_dir}/{FHIR_DIR}/, "
                     f"{crs} with CRS, {icans} with ICANS, {infections} infections; ground truth in "
                     f"{out_dir}/expected.json\n")
    return 0


def check_command(folder: str) -> int:
    """Grade DIR/fhir and compare with DIR/expected.json: 0 agree, 1 disagreements (one line each on
    stderr), 2 unreadable folder."""
    from .synth.compare import disagreements, expected_outcomes, graded_outcomes
    from .synth.generate import CONCEPT_MAP, FHIR_DIR

    root = Path(folder)
    try:
        doc = json.loads((root / "expected.json").read_text(encoding="utf-8"))
        expected = expected_outcomes(doc["expected"])
        cm = root / CONCEPT_MAP
        maps = [(str(cm), orjson.loads(cm.read_bytes()))] if cm.is_file() else []
        engine = Engine(concept_maps=maps)
        result = engine.grade(read_paths([root / FHIR_DIR]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"cart-fhir: error: {folder}: not a synth cohort ({type(exc).__name__}: {exc})\n")
        return 2
    except AdapterError as exc:
        sys.stderr.write(f"cart-fhir: error: {folder}: {exc}\n")
        return 2
    long_term = all("long_term" in row for row in doc["expected"])  # cohorts written before issue 16: not
    lines = disagreements(expected, graded_outcomes(result, long_term))
    for line in lines:
        sys.stderr.write(f"{line}\n")
    sys.stderr.write(f"cart-fhir: {len(expected)} patients, {len(lines)} disagreement(s) between "
                     f"{folder}/expected.json and the engine\n")
    return 1 if lines else 0
