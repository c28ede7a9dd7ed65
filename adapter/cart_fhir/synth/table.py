"""The synthetic-cohort distributions (mappings/synth-cohort.yaml): parsed and checked once, at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..tables import Row, Table, load_yaml_table


class Spread(Row):
    """A median with its reported [min, max] range, in days."""

    median: int = Field(ge=0)
    range: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self) -> Spread:
        lo, hi = self.range
        if not lo <= self.median <= hi:
            raise ValueError(f"median {self.median} outside range {self.range}")
        return self


class ToxicityRow(Row):
    grade_pct: tuple[float, float, float, float]  # share with worst grade 1, 2, 3, 4 (rest grade 0)
    onset_day: Spread
    duration_days: Spread
    verified: bool
    note: str
    checked: str = ""  # the source where the row's figures were found (title and URL)

    @model_validator(mode="after")
    def _at_most_100(self) -> ToxicityRow:
        if any(p < 0 for p in self.grade_pct) or sum(self.grade_pct) > 100:
            raise ValueError(f"grade_pct {self.grade_pct} must be >= 0 and sum to <= 100")
        return self


class GradeMix(Row):
    """Share of patients whose worst grade is 1, 2, 3, 4 (rest grade 0), with its source."""

    grade_pct: tuple[float, float, float, float]
    verified: bool
    source: str
    note: str

    @model_validator(mode="after")
    def _at_most_100(self) -> GradeMix:
        if any(p < 0 for p in self.grade_pct) or sum(self.grade_pct) > 100:
            raise ValueError(f"grade_pct {self.grade_pct} must be >= 0 and sum to <= 100")
        return self


class Icaht(Row):
    early: GradeMix
    late: GradeMix


class SynthInfectionRow(Row):
    """One kind of infection: how many patients get it in a window, when, for how long, and how it is
    treated (share treated intravenously; the rest orally)."""

    kind: Literal["bacterial", "viral", "other"]
    key: Literal["bacteremia", "cmv-infection", "pneumonia"]  # rows of mappings/infections.yaml
    window: Literal["early", "late"]
    pct: float = Field(ge=0, le=100)
    onset_day: Spread
    duration_days: Spread
    iv_pct: float = Field(ge=0, le=100)
    verified: bool
    source: str


class LongTermRow(Row):
    """IAGO long-term effects of a synthetic patient (issue 16): shares in percent, drawn independently."""

    hypogammaglobulinemia_pct: float = Field(ge=0, le=100)  # day-90 IgG <= 400 mg/dL
    ivig_pct: float = Field(ge=0, le=100)  # of those, replacement given
    b_cell_aplasia_pct: float = Field(ge=0, le=100)  # day-90 CD19+ B cells < 20/uL
    b_cell_recovery_pct: float = Field(ge=0, le=100)  # of those, recovered by day 180
    second_malignancy_pct: float = Field(ge=0, le=100)
    lineage_weights: tuple[float, float, float]  # t-cell, myeloid, other
    malignancy_onset_day: tuple[int, int]
    verified: bool
    source: str


class Trial(Row):
    source: str
    crs: ToxicityRow
    icans: ToxicityRow


class SynthProductRow(Row):
    product: str
    weight: float = Field(gt=0)
    indication: str
    snomed: str
    age: tuple[int, int]
    trial: str
    source: str


class SynthTable(Table):
    products: tuple[SynthProductRow, ...]
    trials: dict[str, Trial]
    icaht: Icaht
    infections: tuple[SynthInfectionRow, ...]
    long_term: LongTermRow | None = None

    @model_validator(mode="after")
    def _trials_known(self) -> SynthTable:
        unknown = {p.trial for p in self.products} - set(self.trials)
        if unknown:
            raise ValueError(f"products name unknown trials {sorted(unknown)}")
        for row in self.infections:
            lo, hi = (1, 30) if row.window == "early" else (31, 90)
            if not lo <= row.onset_day.range[0] <= row.onset_day.range[1] <= hi:
                raise ValueError(f"infection {row.key} ({row.window}): onset range must lie in days {lo}-{hi}")
        return self


def load_synth_table(folder: str | None = None) -> SynthTable:
    return load_yaml_table("synth-cohort.yaml", SynthTable, folder)
