"""The run report: what was read, used, ignored and graded, with warnings and errors located in the input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .errors import BadInput, Location, with_value


@dataclass(slots=True)
class Issue:
    severity: str  # "warning" | "error" | "information"
    message: str
    location: Location
    value: str | None = None  # the offending input value: printed only with --show-values (PHI)

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def describe(self, show_values: bool = False) -> str:
        return with_value(str(self), self.value, show_values)

    def bad_input(self) -> BadInput:
        return BadInput(self.message, self.location, self.value)


@dataclass(slots=True)
class RunReport:
    resources_read: int = 0
    resources_used: int = 0
    ignored: Counter[str] = field(default_factory=Counter)  # resource type or reason -> count
    patients: int = 0
    patients_graded: int = 0
    grades_written: int = 0
    resources_written: int = 0
    unverified_rows: set[str] = field(default_factory=set)
    issues: list[Issue] = field(default_factory=list)
    # Coverage (issue 13 item 1): graded infusions, those with no reading in the window at all, and per input
    # the infusions that had other data in the window but no usable reading of it.
    infusions_graded: int = 0
    infusions_without_data: int = 0
    missing_inputs: Counter[str] = field(default_factory=Counter)
    missing_concepts: Counter[str] = field(default_factory=Counter)  # the same per concept (--require)
    coverage_window: str = "days 0-14"
    coverage_routine: set[str] = field(default_factory=set)  # inputs charted for everyone: warned about
    coverage_gaps: list[str] = field(default_factory=list)  # "Patient/x infusion N: a, b" (the first few)
    unmapped_codes: Counter[str] = field(default_factory=Counter)  # "system|code" of Observations not used
    # Observations read on the fast path (ingest/fast.py) and by the extractor (issue 18): the only figures
    # that differ between the two paths, so no summary line shows them (bench_ratio.py does).
    observations_fast: int = 0
    observations_fallback: int = 0

    def merge(self, other: RunReport) -> None:
        """Add another run's counts and issues (a server cohort is graded one patient at a time)."""
        self.resources_read += other.resources_read
        self.resources_used += other.resources_used
        self.ignored.update(other.ignored)
        self.patients += other.patients
        self.patients_graded += other.patients_graded
        self.grades_written += other.grades_written
        self.resources_written += other.resources_written
        self.unverified_rows |= other.unverified_rows
        self.issues.extend(other.issues)
        self.infusions_graded += other.infusions_graded
        self.infusions_without_data += other.infusions_without_data
        self.missing_inputs.update(other.missing_inputs)
        self.missing_concepts.update(other.missing_concepts)
        self.unmapped_codes.update(other.unmapped_codes)
        self.observations_fast += other.observations_fast
        self.observations_fallback += other.observations_fallback
        self.coverage_window = other.coverage_window
        self.coverage_routine |= other.coverage_routine
        self.coverage_gaps.extend(other.coverage_gaps[:max(0, GAPS_LISTED - len(self.coverage_gaps))])

    def record_coverage(self, missing: tuple[str, ...] | None, concepts: tuple[str, ...] = (),
                        where: str = "") -> None:
        """One graded infusion (`where`: "Patient/x infusion N"): the inputs (and concepts) it lacked in the
        window (None: no reading in the window at all)."""
        self.infusions_graded += 1
        routine = ["no reading at all"] if missing is None else [m for m in missing if m in self.coverage_routine]
        if where and routine and len(self.coverage_gaps) < GAPS_LISTED:
            self.coverage_gaps.append(f"{where}: {', '.join(routine)}")
        if missing is None:
            self.infusions_without_data += 1
        else:
            self.missing_inputs.update(missing)
            self.missing_concepts.update(concepts)

    def infusions_missing(self, name: str, group: bool) -> int:
        """Graded infusions without a usable reading of an input (a coverage group, or one concept)."""
        return (self.missing_inputs if group else self.missing_concepts)[name] + self.infusions_without_data

    def warn(self, message: str, location: Location, value: str | None = None) -> None:
        self.issues.append(Issue("warning", message, location, value))

    def error(self, err: BadInput) -> None:
        self.issues.append(Issue("error", err.message, err.location, err.value))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def summary_lines(self) -> list[str]:
        ignored = ", ".join(f"{k} {v}" for k, v in sorted(self.ignored.items())) or "none"
        lines = [
            f"patients: {self.patients} read, {self.patients_graded} with a CAR-T infusion graded",
            f"resources: {self.resources_read} read, {self.resources_used} used; ignored: {ignored}",
            f"written: {self.grades_written} daily grades, {self.resources_written} resources in all",
        ]
        lines.extend(self._coverage_lines())
        if self.unverified_rows:
            lines.append("criteria rows not yet verified against a primary source were used: "
                         + ", ".join(sorted(self.unverified_rows)))
        return lines

    def _coverage_lines(self) -> list[str]:
        lines = []
        if self.missing_inputs:
            gaps = ", ".join(f"{k} {v}" for k, v in self.missing_inputs.most_common())
            lines.append(f"inputs without a usable reading in {self.coverage_window} (graded infusions, of "
                         f"{self.infusions_graded}): {gaps}")
        if self.coverage_gaps:
            lines.append(f"  routinely charted inputs missing, per infusion (at most {GAPS_LISTED} listed): "
                         + "; ".join(self.coverage_gaps))
        if self.infusions_without_data:
            lines.append(f"graded infusions with no reading at all in {self.coverage_window}: "
                         f"{self.infusions_without_data} of {self.infusions_graded}")
        unused = sum(self.unmapped_codes.values())
        if unused >= UNMAPPED_SHOWN_FROM and unused * 20 >= self.resources_read:
            top = ", ".join(f"{code} {n}" for code, n in self.unmapped_codes.most_common(UNMAPPED_LISTED))
            lines.append(f"most common Observation codes not used ({unused} in all): {top}; if they are site "
                         "codes for vital signs, labs or neurological scores, map them with --concept-map")
        return lines

    def coverage_warnings(self) -> list[str]:
        """One line naming each routinely charted input that most graded infusions lack: likely unmapped
        site codes, not a healthy cohort (issue 13 item 1)."""
        total = self.infusions_graded
        if not total:
            return []
        if self.infusions_without_data * 2 > total:
            return [(f"{self.infusions_without_data} of {total} graded infusions have no reading at all in "
                    f"{self.coverage_window}; if the input codes them with site codes, map them with --concept-map")]
        lacking = [f"{name} ({n + self.infusions_without_data} of {total})"
                   for name, n in self.missing_inputs.most_common()
                   if name in self.coverage_routine and (n + self.infusions_without_data) * 2 > total]
        if not lacking:
            return []
        return [(f"no usable reading in {self.coverage_window} for most graded infusions of: {', '.join(lacking)}; "
                "results that need them are not assessable or may be too low; if the input codes them with site "
                "codes, map them with --concept-map")]


UNMAPPED_SHOWN_FROM = 10  # a few stray codes are normal; this many (and 5 % of the input) deserve a line
UNMAPPED_LISTED = 5
GAPS_LISTED = 10  # infusions named in the run report's coverage line (summary.json names every one)
