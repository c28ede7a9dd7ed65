"""CAR-HEMATOTOX score before lymphodepletion (Rejeski et al., Blood 2021;138(24):2499-2513, CAR-HEMATOTOX
score table; grading.md section 5). A pre-infusion risk score for hematotoxicity, not a toxicity grade.

Combining rules (cut-offs, windows and risk groups are data in mappings/car-hematotox-2021.yaml; every
cut-off there is verified: false, decision 10, and each band's inclusivity is a column):
- 5.2 timing: per variable, the latest value in [LD start - 7 days, first LD dose); a value on the LD start
  day counts only when timed before that dose. LD = the earliest lymphodepleting dose (drug role
  "lymphodepletion") from day -14 on; without one, days -14 to -3.
- 5.1: each variable scores the points of the band its value falls in; the score is their sum (0-7);
  0-1 low risk, >= 2 high risk. CRP is compared in mg/dL (the concept's canonical unit: 30 mg/L = 3.0 mg/dL).
- 5.2 missing values: a variable without a value, or whose value is a bound straddling a cut-off (">10 mg/L"
  from an hs-CRP assay), may score any of its possible points. Min score >= 2 -> high, max <= 1 -> low (state
  at-least, value = min score), otherwise not assessable with the open variables named.
- 5.2 caveat: G-CSF within 7 days before the ANC draw raises the count: flagged, the score is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal, get_args

from ..model import DrugAdmin, Quantity, Reading
from ..tables import Row, Table
from ..timeline import Course
from .result import Assessment, Component, State, Toxicity

CODE = "car-hematotox-score"
Variable = Literal["platelets", "anc", "hemoglobin", "crp", "ferritin"]
SettingName = Literal["ld-lookback-days", "ld-search-first-day", "no-ld-first-day", "no-ld-last-day",
                      "gcsf-lookback-days"]
Bound = tuple[float | None, bool]  # (value, inclusive); None = unbounded


class HematotoxSetting(Row, frozen=True, kw_only=True):
    value: int
    unit: str
    verified: bool
    source: str


class VariableRow(Row, frozen=True, kw_only=True):
    variable: Variable
    label: str
    loinc: str
    unit: str
    verified: bool
    source: str


class BandRow(Row, frozen=True, kw_only=True):
    id: str
    variable: Variable
    points: int
    min: float | None
    min_inclusive: bool
    max: float | None
    max_inclusive: bool
    verified: bool
    source: str


class RiskRow(Row, frozen=True, kw_only=True):
    group: Literal["low", "high"]
    min_score: int
    max_score: int | None
    verified: bool
    source: str


class HematotoxTable(Table, frozen=True, kw_only=True):
    variables: tuple[VariableRow, ...]
    bands: tuple[BandRow, ...]
    risk: tuple[RiskRow, ...]
    settings: dict[SettingName, HematotoxSetting]

    def __post_init__(self) -> None:
        names = [v.variable for v in self.variables]
        if sorted(names) != sorted(get_args(Variable)):
            raise ValueError(f"variables: need each of {sorted(get_args(Variable))} once")
        if missing := set(get_args(SettingName)) - set(self.settings):
            raise ValueError(f"settings: missing {sorted(missing)}")
        if len({b.id for b in self.bands}) != len(self.bands):
            raise ValueError("bands: duplicate id")
        for v in names:
            bands = sorted((b for b in self.bands if b.variable == v),
                           key=lambda b: -1e300 if b.min is None else b.min)
            # The bands must cover every value exactly once: contiguous, one side inclusive at each cut-off.
            if not bands or bands[0].min is not None or bands[-1].max is not None or any(
                    a.max is None or a.max != b.min or a.max_inclusive == b.min_inclusive
                    for a, b in pairwise(bands)):
                raise ValueError(f"bands of {v} must cover every value exactly once")
        risk = sorted(self.risk, key=lambda r: r.min_score)
        if risk[0].min_score != 0 or risk[-1].max_score is not None or any(
                a.max_score is None or a.max_score + 1 != b.min_score for a, b in pairwise(risk)):
            raise ValueError("risk groups must cover scores 0 to open end contiguously")


def _interval(q: Quantity) -> tuple[Bound, Bound]:
    """The values a result allows: exact, or a bound (grading.md 0.4)."""
    # Unit conversion leaves float noise (30 mg/L -> 3.0000000000000004 mg/dL): compare at 1e-6 precision.
    c, v = q.comparator, round(q.value, 6)
    if c is None:
        return (v, True), (v, True)
    if c in ("<", "<="):
        return (None, False), (v, c == "<=")
    return (v, c == ">="), (None, False)


def _overlaps(band: BandRow, q: Quantity) -> bool:
    """Can the result's true value lie in the band?"""
    (lo, lo_inc), (hi, hi_inc) = _interval(q)
    for (a, a_inc), (b, b_inc) in (((band.min, band.min_inclusive), (hi, hi_inc)),
                                   ((lo, lo_inc), (band.max, band.max_inclusive))):
        if a is not None and b is not None and (a > b or (a == b and not (a_inc and b_inc))):
            return False
    return True


@dataclass(frozen=True, slots=True)
class _Window:
    start: datetime
    end: datetime  # exclusive: the first lymphodepletion dose, or the end of the fallback's last day
    label: str  # where the values were looked for, in words
    ld: DrugAdmin | None
    ld_day: int | None


class HematotoxScorer:
    """Scores CAR-HEMATOTOX for one course from the labs drawn before its lymphodepletion."""

    def __init__(self, table: HematotoxTable) -> None:
        self.t = table
        self.s = {k: v.value for k, v in self.t.settings.items()}
        self.vars = {v.variable: v for v in self.t.variables}
        self.bands = {v: [b for b in self.t.bands if b.variable == v] for v in self.vars}
        self.table_id = f"{self.t.table} v{self.t.version}"

    def score(self, course: Course) -> Assessment:
        w = self.window(course)
        reasons = [f"latest value of each variable {w.label}"]
        flags = ["unverified-cutoffs"] if self._unverified_bands() else []
        if w.ld is None:
            flags.append("no-lymphodepletion-data")
            reasons.append("no lymphodepleting chemotherapy recorded: fallback window (grading.md 5.2)")
        comps: list[Component] = []
        used: list[Reading] = []
        missing: list[str] = []
        low = high = 0
        for name, var in self.vars.items():
            r = self.baseline(course, w, name)
            points = sorted({b.points for b in self.bands[name]
                             if r is None or not isinstance(r.value, Quantity) or _overlaps(b, r.value)})
            low, high = low + points[0], high + points[-1]
            if r is None:
                missing.append(f"{var.label} (LOINC {var.loinc}) {w.label}")
                continue
            used.append(r)
            q = r.value
            unit = var.unit if var.unit.startswith("/") else f" {var.unit}"
            shown = f"{q.comparator or ''}{q.value:g}{unit}" if isinstance(q, Quantity) else str(q)
            if len(points) == 1:
                comps.append(Component(name, "integer", points[0], points[0]))
                reasons.append(f"{var.label} {shown} on day {course.day_of(r.when)}: {points[0]} point(s)")
            else:
                missing.append(f"exact {var.label} (reported as {shown}, "
                               f"could score {points[0]}-{points[-1]})")
        state, value, group = self._decide(low, high, reasons)
        gcsf = self._gcsf(course, used)
        if gcsf:
            flags.append("g-csf-before-draw")
            reasons.append("G-CSF given within "
                           f"{self.s['gcsf-lookback-days']} days before the ANC draw: the ANC may be raised")
        return Assessment(Toxicity.CAR_HEMATOTOX, CODE, state, value, w.start, w.end, group, tuple(comps),
                          tuple(r.ref for r in used), tuple(d.ref for d in gcsf),
                          tuple(missing) if state != State.GRADED else (), tuple(reasons), tuple(flags),
                          self.table_id)

    def unverified_rows(self, a: Assessment) -> tuple[str, ...]:
        """Table rows marked verified: false that the score used (decision 10, run report)."""
        settings: list[SettingName] = ["gcsf-lookback-days"]
        settings += ["no-ld-first-day", "no-ld-last-day"] if "no-lymphodepletion-data" in a.flags else \
            ["ld-lookback-days", "ld-search-first-day"]
        ids = [n for n in settings if not self.t.settings[n].verified]
        return tuple(f"{self.t.table}:{i}" for i in (*self._unverified_bands(), *ids))

    # ---- baseline --------------------------------------------------------------------------------

    def window(self, course: Course) -> _Window:
        """5.2: [LD start - 7 days, first LD dose), or days -14 to -3 without lymphodepletion data."""
        ld = [d for d in course.pre_drugs
              if d.role == "lymphodepletion" and self.s["ld-search-first-day"] <= course.day_of(d.start) <= 0]
        if not ld:
            first, last = self.s["no-ld-first-day"], self.s["no-ld-last-day"]
            return _Window(course.window(first)[0], course.window(last)[1],
                           f"before lymphodepletion (days {first} to {last})", None, None)
        dose = min(ld, key=lambda d: d.start.at)
        day = course.day_of(dose.start)
        # A bare-date dose gives no time: nothing drawn that day is known to precede it.
        end = course.window(day)[0] if dose.start.date_only else dose.start.at
        first = day - self.s["ld-lookback-days"]
        label = f"before lymphodepletion (day {first} to the first {dose.agent} dose on day {day})"
        return _Window(course.window(first)[0], end, label, dose, day)

    def baseline(self, course: Course, w: _Window, concept: str) -> Reading | None:
        """The latest reading of the concept in the window (a bare date on the LD day does not count)."""
        found = [r for day, r in course.pre_of(concept)
                 if w.start <= r.when.at < w.end
                 and not (r.when.date_only and day == w.ld_day)]
        return max(found, key=lambda r: r.when.at, default=None)

    # ---- helpers ---------------------------------------------------------------------------------

    def _group(self, score: int) -> str:
        return next(r.group for r in self.t.risk
                    if r.min_score <= score and (r.max_score is None or score <= r.max_score))

    def _decide(self, low: int, high: int, reasons: list[str]) -> tuple[State, int | None, str | None]:
        """5.2 bounds: the score if known; else the risk group when both ends of the range agree."""
        if low == high:
            group = self._group(low)
            reasons.append(f"score {low}: {group} risk")
            return State.GRADED, low, group
        if self._group(low) == self._group(high):
            group = self._group(low)
            reasons.append(f"score {low} to {high} whatever the missing values: {group} risk")
            return State.AT_LEAST, low, group
        reasons.append(f"score {low} to {high}: low or high risk depends on the missing values")
        return State.NOT_ASSESSABLE, None, None

    def _gcsf(self, course: Course, used: list[Reading]) -> list[DrugAdmin]:
        """5.2 caveat: G-CSF started within N days before the ANC draw."""
        anc = next((r for r in used if r.concept == "anc"), None)
        if anc is None:
            return []
        since = anc.when.at - timedelta(days=self.s["gcsf-lookback-days"])
        return [d for d in (*course.pre_drugs, *course.drugs)
                if d.role == "g-csf" and since <= d.start.at < anc.when.at]

    def _unverified_bands(self) -> list[str]:
        return [b.id for b in self.t.bands if not b.verified]
