"""`cart-fhir synth --patients N --seed S -o DIR`: a seeded synthetic CAR-T cohort and its expected grades."""

from __future__ import annotations

import argparse
import sys

from .errors import ConfigError
from .synth.generate import FHIR_DIR, Format, write_cohort


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    syn = sub.add_parser("synth", help="generate synthetic CAR-T patients (FHIR R4) with their expected grades",
                         description="Seeded synthetic CAR-T patients as FHIR R4 (DIR/fhir/) and the scenario's "
                                     "expected CRS/ICANS grades (DIR/expected.json). Same seed, same bytes.")
    syn.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    syn.add_argument("--format", choices=("bundle", "ndjson"), default="bundle",
                     help="one Bundle per patient (default) or NDJSON per resource type")
    syn.add_argument("--days", type=int, default=30, help="days of data after the infusion (default 30)")


def run(args: argparse.Namespace) -> int:
    return synth_command(args.patients, args.seed, args.out, args.format, args.days)


def synth_command(patients: int, seed: int, out_dir: str, fmt: str, days: int) -> int:
    """Write DIR/fhir/ (bundles or NDJSON) and DIR/expected.json; 0 done, 2 bad arguments or unwritable."""
    if patients < 1 or days < 7:
        sys.stderr.write("cart-fhir: error: synth needs --patients >= 1 and --days >= 7\n")
        return 2
    try:
        rows = write_cohort(out_dir, patients, seed, days, Format(fmt))
    except ValueError:
        sys.stderr.write(f"cart-fhir: error: --format must be one of {[f.value for f in Format]}\n")
        return 2
    except (OSError, ConfigError) as exc:
        sys.stderr.write(f"cart-fhir: error: {out_dir}: {exc}\n")
        return 2
    crs = sum(1 for r in rows if r["crs"]["max_grade"])
    icans = sum(1 for r in rows if r["icans"]["max_grade"])
    sys.stderr.write(f"cart-fhir: wrote {len(rows)} patients ({fmt}) to {out_dir}/{FHIR_DIR}/, "
                     f"{crs} with CRS, {icans} with ICANS; ground truth in {out_dir}/expected.json\n")
    return 0
