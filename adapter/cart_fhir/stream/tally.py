"""The run report of a streamed run: bucket reports merged, shared resources counted once, issues capped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..report import Issue, RunReport
from .partition import Partition
from .worker import MAX_ISSUES, TaskResult

NOT_REFERENCED = "Medication (not referenced)"


@dataclass(slots=True)
class Tally:
    report: RunReport = field(default_factory=RunReport)
    errors_total: int = 0
    warnings_total: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self, extra: dict[str, Any]) -> dict[str, Any]:
        r = self.report
        seconds = self.timings.get("total", 0.0)
        return {
            **extra,
            "patients": {"read": r.patients, "graded": r.patients_graded},
            "resources": {"read": r.resources_read, "used": r.resources_used,
                          "ignored": dict(sorted(r.ignored.items())), "written": r.resources_written,
                          "daily_grades": r.grades_written},
            "errors": {"total": self.errors_total, "listed": [_issue(i) for i in self.errors]},
            "warnings": {"total": self.warnings_total, "listed": [_issue(i) for i in self.warnings]},
            "unverified_rows": sorted(r.unverified_rows),
            # Observations read on the fast path and by the extractor (ingest/fast.py; CART_FHIR_FAST_READ=0)
            "observations_read": {"fast_path": r.observations_fast, "extractor": r.observations_fallback},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "throughput": {"patients_per_s": round(r.patients / seconds, 1) if seconds else None},
        }


def _issue(i: Issue) -> dict[str, Any]:
    loc = i.location
    return {"message": i.message, "file": loc.file, "line": loc.line, "entry": loc.entry,
            "resource": loc.resource}


def tally(results: Iterable[TaskResult], part: Partition) -> Tally:
    """Merge task reports in task order. Every bucket read the shared Medications: take them out of each
    bucket's counts and add them once, a Medication used when any bucket's administrations referred to it."""
    t = Tally()
    used: set[str] = set()
    shared_distinct = len(part.shared_keys) + part.shared_anonymous
    seen: set[tuple[str, str, Any]] = set()
    done = list(results)
    for res in done:
        rep = res.report
        if res.index < len(part.buckets) and part.shared_lines:
            rep.resources_read -= part.shared_lines
            rep.resources_used -= shared_distinct - rep.ignored.pop(NOT_REFERENCED, 0)
            rep.ignored["superseded version"] -= part.shared_lines - shared_distinct
            used |= res.shared_used
        t.errors_total += res.errors_total
        t.warnings_total += res.warnings_total
        for issue in rep.issues:
            key = (issue.severity, issue.message, issue.location)
            if key in seen:  # a shared resource's warning, once per bucket that read it
                t.errors_total -= issue.severity == "error"
                t.warnings_total -= issue.severity != "error"
                continue
            seen.add(key)
            bucket = t.errors if issue.severity == "error" else t.warnings
            if len(bucket) < MAX_ISSUES:
                bucket.append(issue)
        rep.issues = []
        t.report.merge(rep)
    r = t.report
    with_device = sum(1 for res in done if res.device is not None)
    r.resources_written -= max(0, with_device - 1)  # each task counted its own copy of the one Device
    if part.shared_lines:
        r.resources_read += part.shared_lines
        r.resources_used += len(used)
        r.ignored["superseded version"] += part.shared_lines - shared_distinct
        if shared_distinct > len(used):
            r.ignored[NOT_REFERENCED] += shared_distinct - len(used)
    r.ignored = +r.ignored  # drop zero counts left by the corrections
    return t
