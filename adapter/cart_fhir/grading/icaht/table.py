"""EHA/EBMT 2023 ICAHT criteria table (mappings/eha-ebmt-icaht-2023.yaml): row models, checks, lookups."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, get_args

from ...tables import Row, Table

SettingName = Literal["stable-recovery-days", "interpolation-max-gap-days", "interpolation-round-to",
                      "never-recovered-start-last-day", "late-min-measurements"]


class Setting(Row, frozen=True, kw_only=True):
    value: int
    unit: str
    verified: bool
    source: str


class IcahtWindow(Row, frozen=True, kw_only=True):
    window: Literal["early", "late"]
    code: str
    first_day: int
    last_day: int
    verified: bool
    source: str


class EarlyRow(Row, frozen=True, kw_only=True):
    id: str
    anc_at_most: int
    min_days: int
    max_days: int | None
    grade: int
    verified: bool
    source: str


class LateRow(Row, frozen=True, kw_only=True):
    id: str
    anc_at_most: int
    grade: int
    verified: bool
    source: str


class IcahtTable(Table, frozen=True, kw_only=True):
    windows: tuple[IcahtWindow, ...]
    settings: dict[SettingName, Setting]
    early: tuple[EarlyRow, ...]
    late: tuple[LateRow, ...]

    def __post_init__(self) -> None:
        if sorted(w.window for w in self.windows) != ["early", "late"]:
            raise ValueError("windows: exactly one early and one late window")
        missing = set(get_args(SettingName)) - set(self.settings)
        if missing:
            raise ValueError(f"settings: missing {sorted(missing)}")
        ids = [*(r.id for r in self.early), *(r.id for r in self.late)]
        if len(set(ids)) != len(ids):
            raise ValueError("early/late: duplicate row id")
        for t in {r.anc_at_most for r in self.early}:
            rows = sorted((r for r in self.early if r.anc_at_most == t), key=lambda r: r.min_days)
            if any(a.max_days is None or a.max_days >= b.min_days for a, b in pairwise(rows)):
                raise ValueError(f"early: day bands of ANC <= {t} overlap")
        if len({r.anc_at_most for r in self.late}) != len(self.late):
            raise ValueError("late: duplicate threshold")


@dataclass(frozen=True, slots=True)
class Lookups:
    """The table indexed once for the early and late rules."""

    t: IcahtTable
    windows: dict[Literal["early", "late"], IcahtWindow]
    settings: dict[SettingName, int]
    stable: int  # stable recovery: this many consecutive days above the threshold (H3)
    thresholds: tuple[int, ...]  # early ANC thresholds, highest first
    onset: int  # 500: early ICAHT starts at ANC <= 500 (4.1)
    late_rows: tuple[LateRow, ...]  # by grade
    table_id: str

    @classmethod
    def of(cls, t: IcahtTable) -> Lookups:
        settings = {k: v.value for k, v in t.settings.items()}
        thresholds = tuple(sorted({r.anc_at_most for r in t.early}, reverse=True))
        return cls(t, {w.window: w for w in t.windows}, settings, settings["stable-recovery-days"],
                   thresholds, thresholds[0], tuple(sorted(t.late, key=lambda r: r.grade)),
                   f"{t.table} v{t.version}")

    def unverified(self, window: Literal["early", "late"]) -> tuple[str, ...]:
        """Table rows marked verified: false that an assessment of the window uses (decision 10)."""
        names: tuple[SettingName, ...] = ("late-min-measurements",) if window == "late" else (
            "stable-recovery-days", "interpolation-max-gap-days", "interpolation-round-to",
            "never-recovered-start-last-day")
        t = self.t
        rows = [(f"window-{window}", self.windows[window].verified),
                *((n, t.settings[n].verified) for n in names),
                *((r.id, r.verified) for r in (t.late if window == "late" else t.early))]
        return tuple(f"{t.table}:{i}" for i, ok in rows if not ok)
