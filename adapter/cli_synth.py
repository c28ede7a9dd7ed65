"""`cart-fhir synth --patients N --seed S -o DIR`: a seeded synthetic CAR-T cohort and its expected grades."""

from __future__ import annotations

import sys

from .errors import ConfigError
from .synth.generate import FHIR_DIR, Format, write_cohort


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
