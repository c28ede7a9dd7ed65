"""Helpers shared by the tests: run the engine on a built bundle and read the daily grades back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cart_fhir.grading.result import Toxicity
from cart_fhir.ingest.read import read_bytes
from cart_fhir.pipeline import Engine, RunResult

RECORDED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def run(engine: Engine, bundle: dict[str, Any], name: str = "test.json") -> RunResult:
    return engine.grade(read_bytes(orjson.dumps(bundle), name))


def daily(result: RunResult, tox: str, patient: int = 0, course: int = 0) -> dict[int, tuple[str, int | None]]:
    """{day: (state, grade)} for one toxicity of one course."""
    cr = result.patients[patient].courses[course]
    return {d.day: (d.state.value, d.grade) for d in cr.days[Toxicity(tox)]}


def day_grade(result: RunResult, tox: str, day: int) -> tuple[str, int | None]:
    return daily(result, tox).get(day, ("no-observation", None))


def episodes(result: RunResult, tox: str, patient: int = 0, course: int = 0) -> list[tuple[int, int, int | None]]:
    """[(onset_day, max_grade, resolved_day)] of one toxicity."""
    cr = result.patients[patient].courses[course]
    return [(e.onset_day, e.max_grade, e.resolved_day) for e in cr.episodes[Toxicity(tox)]]


def edit_once(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in a text file (a table edit the test means to make, nothing else)."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")
