"""The synthetic-cohort distributions (mappings/synth-cohort.yaml): parsed and checked once, at start-up."""

from __future__ import annotations

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

    @model_validator(mode="after")
    def _at_most_100(self) -> ToxicityRow:
        if any(p < 0 for p in self.grade_pct) or sum(self.grade_pct) > 100:
            raise ValueError(f"grade_pct {self.grade_pct} must be >= 0 and sum to <= 100")
        return self


class Trial(Row):
    source: str
    crs: ToxicityRow
    icans: ToxicityRow


class ProductRow(Row):
    product: str
    weight: float = Field(gt=0)
    indication: str
    snomed: str
    age: tuple[int, int]
    trial: str
    source: str


class SynthTable(Table):
    products: tuple[ProductRow, ...]
    trials: dict[str, Trial]

    @model_validator(mode="after")
    def _trials_known(self) -> SynthTable:
        unknown = {p.trial for p in self.products} - set(self.trials)
        if unknown:
            raise ValueError(f"products name unknown trials {sorted(unknown)}")
        return self


def load_synth_table(folder: str | None = None) -> SynthTable:
    return load_yaml_table("synth-cohort.yaml", SynthTable, folder)
