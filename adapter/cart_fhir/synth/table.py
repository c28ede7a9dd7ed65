"""The synthetic-cohort distributions (mappings/synth-cohort.yaml): parsed and checked once, at start-up."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..tables import Row, Table, load_yaml_table

Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]


class Spread(Row, frozen=True, kw_only=True):
    """A median with its reported [min, max] range, in days."""

    median: Annotated[int, msgspec.Meta(ge=0)]
    range: tuple[int, int]

    def __post_init__(self) -> None:
        lo, hi = self.range
        if not lo <= self.median <= hi:
            raise ValueError(f"median {self.median} outside range {self.range}")


class ToxicityRow(Row, frozen=True, kw_only=True):
    grade_pct: tuple[float, float, float, float]  # share with worst grade 1, 2, 3, 4 (rest grade 0)
    onset_day: Spread
    duration_days: Spread
    verified: bool
    note: str
    checked: str = ""  # the source where the row's figures were found (title and URL)

    def __post_init__(self) -> None:
        if any(p < 0 for p in self.grade_pct) or sum(self.grade_pct) > 100:
            raise ValueError(f"grade_pct {self.grade_pct} must be >= 0 and sum to <= 100")


class GradeMix(Row, frozen=True, kw_only=True):
    """Share of patients whose worst grade is 1, 2, 3, 4 (rest grade 0), with its source."""

    grade_pct: tuple[float, float, float, float]
    verified: bool
    source: str
    note: str

    def __post_init__(self) -> None:
        if any(p < 0 for p in self.grade_pct) or sum(self.grade_pct) > 100:
            raise ValueError(f"grade_pct {self.grade_pct} must be >= 0 and sum to <= 100")


class Icaht(Row, frozen=True, kw_only=True):
    early: GradeMix
    late: GradeMix


class SynthInfectionRow(Row, frozen=True, kw_only=True):
    """One kind of infection: how many patients get it in a window, when, for how long, and how it is
    treated (share treated intravenously; the rest orally)."""

    kind: Literal["bacterial", "viral", "other"]
    key: Literal["bacteremia", "cmv-infection", "pneumonia"]  # rows of mappings/infections.yaml
    window: Literal["early", "late"]
    pct: Percent
    onset_day: Spread
    duration_days: Spread
    iv_pct: Percent
    verified: bool
    source: str


class LongTermRow(Row, frozen=True, kw_only=True):
    """IAGO long-term effects of a synthetic patient (issue 16): shares in percent, drawn independently."""

    hypogammaglobulinemia_pct: Percent  # day-90 IgG <= 400 mg/dL
    ivig_pct: Percent  # of those, replacement given
    b_cell_aplasia_pct: Percent  # day-90 CD19+ B cells < 20/uL
    b_cell_recovery_pct: Percent  # of those, recovered by day 180
    second_malignancy_pct: Percent
    lineage_weights: tuple[float, float, float]  # t-cell, myeloid, other
    malignancy_onset_day: tuple[int, int]
    verified: bool
    source: str


class Trial(Row, frozen=True, kw_only=True):
    source: str
    crs: ToxicityRow
    icans: ToxicityRow


class SynthProductRow(Row, frozen=True, kw_only=True):
    product: str
    weight: Annotated[float, msgspec.Meta(gt=0)]
    indication: str
    snomed: str
    age: tuple[int, int]
    trial: str
    source: str


class SynthTable(Table, frozen=True, kw_only=True):
    products: tuple[SynthProductRow, ...]
    trials: dict[str, Trial]
    icaht: Icaht
    infections: tuple[SynthInfectionRow, ...]
    long_term: LongTermRow | None = None

    def __post_init__(self) -> None:
        unknown = {p.trial for p in self.products} - set(self.trials)
        if unknown:
            raise ValueError(f"products name unknown trials {sorted(unknown)}")
        for row in self.infections:
            lo, hi = (1, 30) if row.window == "early" else (31, 90)
            if not lo <= row.onset_day.range[0] <= row.onset_day.range[1] <= hi:
                raise ValueError(f"infection {row.key} ({row.window}): onset range must lie in days {lo}-{hi}")


def load_synth_table(folder: str | None = None) -> SynthTable:
    return load_yaml_table("synth-cohort.yaml", SynthTable, folder)
