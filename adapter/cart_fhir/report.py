"""The run report: what was read, used, ignored and graded, with warnings and errors located in the input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .errors import BadInput, Location


@dataclass(slots=True)
class Issue:
    severity: str  # "warning" | "error" | "information"
    message: str
    location: Location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


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

    def warn(self, message: str, location: Location) -> None:
        self.issues.append(Issue("warning", message, location))

    def error(self, err: BadInput) -> None:
        self.issues.append(Issue("error", err.message, err.location))

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
        if self.unverified_rows:
            lines.append("criteria rows not yet verified against a primary source were used: "
                         + ", ".join(sorted(self.unverified_rows)))
        return lines
