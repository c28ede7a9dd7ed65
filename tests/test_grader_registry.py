"""The grader registry (grading/registry.py): a new grader is its module, its table and one registry line.

The trivial graders below live in this test module ("its module"), bring their own criteria table written
into a copy of mappings/ ("its table", plus the toxicity's row in output-codes.yaml, "the published codes"),
and are registered by one GraderSpec: nothing else in the package is edited, and their results reach the
output Bundle, the summary rows, the terminal table, the run report and the CDS card criteria.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from fhirbuild import PatientBuilder
from helpers import RECORDED, run

from cart_fhir.errors import ConfigError
from cart_fhir.grading.registry import GRADERS, CourseResult, GraderSpec, OutputKind, check_registry, load_all
from cart_fhir.grading.result import Assessment, DayGrade, Event, Findings, State, Toxicity
from cart_fhir.pipeline import Engine
from cart_fhir.service.cards import criteria_of
from cart_fhir.summary import episode_rows, table_rows
from cart_fhir.tables import Row, Table, TableFile, mappings_dir
from cart_fhir.timeline import Course

FEVER_DAYS = Toxicity("fever-days")
HOT_DAY = Toxicity("hot-day")


# ---- "its module": a grader of its own, pure, with its table's model -------------------------------------------

class FeverDaysRow(Row):
    min_days: int
    grade: int
    verified: bool
    source: str


class FeverDaysTable(Table):
    threshold_celsius: float
    rows: tuple[FeverDaysRow, ...]


class FeverDaysGrader:
    """Counts the days with a temperature at or above the table's threshold; the highest row reached grades."""

    def __init__(self, table: FeverDaysTable) -> None:
        self.t = table

    def grade(self, course: Course) -> Findings:
        hot_readings = [(day, r) for day, r in course.of("body-temperature")
                        if day >= 0 and getattr(r.value, "value", 0) >= self.t.threshold_celsius]
        hot = sorted({day for day, _ in hot_readings})
        reached = [row for row in self.t.rows if len(hot) >= row.min_days]
        if not reached:
            return Findings()
        row = max(reached, key=lambda r: r.grade)
        onset = min(r.when.at for _, r in hot_readings)
        a = Assessment(FEVER_DAYS, "fever-days-grade", State.GRADED, row.grade, onset,
                       reasons=(f"{len(hot)} days at or above {self.t.threshold_celsius} C (row {row.id})",),
                       table=f"{self.t.table} v{self.t.version}")
        ev = Event(FEVER_DAYS, "fever-days", State.GRADED, row.grade, onset, hot[0], assessment=a,
                   details=(("days", len(hot)),))
        return Findings((a,), (ev,))

    def unverified(self, found: Findings) -> list[str]:
        rows = {r.grade: r for r in self.t.rows}
        return [f"{self.t.table}:{rows[ev.max_grade].id}" for ev in found.events
                if ev.max_grade is not None and not rows[ev.max_grade].verified]


class HotDayGrader:
    """A daily grader: grade 1 on each day with a temperature at or above 39 C, else 0."""

    def grade(self, course: Course) -> list[DayGrade]:
        by_day: dict[int, list[float]] = {}
        for day, r in course.of("body-temperature"):
            if day >= 0:
                by_day.setdefault(day, []).append(float(getattr(r.value, "value", 0)))
        out = []
        for day, temps in sorted(by_day.items()):
            start = course.infusion.when.at
            out.append(DayGrade(HOT_DAY, day, State.GRADED, 1 if max(temps) >= 39.0 else 0,
                                start if max(temps) >= 39.0 else None, (start, start)))
        return out


# ---- "its table" and "the published codes": files in a copy of mappings/ -----------------------------------------

TABLE_YAML = """table: fever-days-test
version: 1
source: "a test table"
threshold_celsius: 38.0
rows:
  - {id: two-days, min_days: 2, grade: 1, verified: false, source: "test"}
  - {id: four-days, min_days: 4, grade: 2, verified: true, source: "test"}
"""
FACTS_YAML = """  fever-days:
    code: fever-days
    short: "Fever days"
    criteria_table: fever-days-test
    source_url: "https://example.org/fever-days"
    summary_details: [days]
    label_detail: days
    display: "Days with fever"
    scale: fever-days-grade
    scale_display: "Fever days grade (test)"
    criteria: "A test criterion"
    ncit: null
  hot-day:
    code: hot-day
    short: "Hot day"
    criteria_table: fever-days-test
    source_url: "https://example.org/hot-day"
    display: "Hot day"
    scale: hot-day-grade
    scale_display: "Hot day grade (test)"
    criteria: "A test criterion"
    ncit: null
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("mappings")
    shutil.copytree(mappings_dir(), target, dirs_exist_ok=True)
    (target / "fever-days-test.yaml").write_text(TABLE_YAML)
    codes = (target / "output-codes.yaml").read_text()
    (target / "output-codes.yaml").write_text(codes.replace("\ntoxicities:\n", "\ntoxicities:\n" + FACTS_YAML, 1))
    return target


# ---- "one registry line" ------------------------------------------------------------------------------------------

SPECS = [
    GraderSpec("fever-days", OutputKind.FINDINGS, (FEVER_DAYS,), concepts=("body-temperature",),
               tables=(TableFile("fever-days-test.yaml", FeverDaysTable),),
               build=lambda t: FeverDaysGrader(t.get(FeverDaysTable)), run=lambda g, course, cr: g.grade(course),
               unverified=lambda g, found: g.unverified(found)),
    GraderSpec("hot-day", OutputKind.DAILY, (HOT_DAY,), concepts=("body-temperature",),
               build=lambda t: HotDayGrader(), run=lambda g, course, cr: g.grade(course)),
]


@pytest.fixture(scope="module")
def extended(folder: Path) -> Engine:
    registry = [*GRADERS, *SPECS]
    return Engine(tables=load_all(str(folder), registry), graders=registry, strict=False)


def _patient() -> dict:
    b = PatientBuilder()
    for day, temp in ((1, 38.4), (2, 39.2), (3, 38.1), (5, 36.9)):
        b.temp(day, "08:00", temp)
    return b.bundle()


def test_registered_grader_reaches_every_output(extended: Engine) -> None:
    result = run(extended, _patient())
    [cr] = result.patients[0].courses
    [ev] = [e for e in cr.events if e.toxicity == FEVER_DAYS]
    assert (ev.max_grade, ev.onset_day) == (1, 1)  # three fever days: row two-days
    rows = [r for r in episode_rows(result) if r["toxicity"] == "fever-days"]
    assert len(rows) == 1 and rows[0]["max_grade"] == 1 and rows[0]["days"] == 3  # summary_details
    assert ("fever-days (3)" in [t[2] for t in table_rows(result)])  # label_detail
    assert "fever-days-test:two-days" in result.report.unverified_rows
    written = extended.resources(result, RECORDED)
    kinds = [(w.resource["resourceType"], w.resource.get("code", {}).get("coding", [{}])[0].get("code"))
             for w in written]
    assert ("Observation", "fever-days-grade") in kinds and ("Condition", "fever-days") in kinds
    events = [w.resource for w in written if w.resource["resourceType"] == "AdverseEvent"]
    assert any(c.get("code") == "fever-days" for e in events for c in e["event"]["coding"])
    assert extended.versions["fever-days-test"] == 1
    assert criteria_of(extended)[FEVER_DAYS].name == "Fever days"


def test_registered_daily_grader_gets_episodes_and_resources(extended: Engine) -> None:
    result = run(extended, _patient())
    [cr] = result.patients[0].courses
    assert [(d.day, d.grade) for d in cr.days[HOT_DAY]] == [(1, 0), (2, 1), (3, 0), (5, 0)]
    [ep] = cr.episodes[HOT_DAY]
    assert (ep.onset_day, ep.max_grade, ep.resolved_day) == (2, 1, 3)
    rows = [r for r in episode_rows(result) if r["toxicity"] == "hot-day"]
    assert len(rows) == 1 and "treatments" not in rows[0]  # no treatments grader reads it
    written = extended.resources(result, RECORDED)
    scales = [w.resource["code"]["coding"][0]["code"] for w in written if w.resource["resourceType"] == "Observation"]
    assert scales.count("hot-day-grade") == 4


def test_shipped_graders_unchanged_by_the_extension(extended: Engine, engine: Engine) -> None:
    """The shipped toxicities grade the same with or without the extra graders."""
    plain = run(engine, _patient()).patients[0].courses[0]
    more = run(extended, _patient()).patients[0].courses[0]
    assert plain.days[Toxicity.CRS] == more.days[Toxicity.CRS]
    assert plain.events == [e for e in more.events if e.toxicity != FEVER_DAYS]


@pytest.mark.parametrize("change, message", [
    pytest.param(lambda s: [*s, s[-1]], "registered twice", id="duplicate-name"),
    pytest.param(lambda s: [GraderSpec("early", OutputKind.FINDINGS, (Toxicity.INFECTION,), reads=("crs",),
                                       build=lambda t: None, run=lambda g, c, r: Findings()), *s],
                 "do not run before it", id="reads-a-later-grader"),
    pytest.param(lambda s: [*s, GraderSpec("x", OutputKind.FINDINGS, (Toxicity.INFECTION,), concepts=("tempo",),
                                           build=lambda t: None, run=lambda g, c, r: Findings())],
                 "unknown concepts", id="unknown-concept"),
    pytest.param(lambda s: [*s, GraderSpec("y", OutputKind.FINDINGS, (Toxicity("no-facts"),),
                                           build=lambda t: None, run=lambda g, c, r: Findings())],
                 "no row in output-codes.yaml", id="toxicity-without-facts"),
])
def test_registry_is_checked_at_start_up(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_registry(change(list(GRADERS)), load_all())


def test_grader_table_missing_from_load_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FeverDaysTable"):
        load_all().get(FeverDaysTable)


def test_engine_on_another_folder_reaches_every_grader(folder: Path) -> None:
    """Every grader's table comes from the folder the engine was built on (issue 12: InfectionGrader and
    others used to reload the shipped files)."""
    tables = load_all(str(folder), [*GRADERS, *SPECS])
    engine = Engine(tables=tables, graders=[*GRADERS, *SPECS])
    for g in engine.graders:
        table = getattr(g.grader, "t", None)
        if table is not None:
            assert any(table is t for t in (*tables.extra.values(), tables.crs, tables.icans, tables.malignancies)), \
                g.spec.name


def test_course_result_files_scores_by_toxicity() -> None:
    cr = CourseResult(course=None)  # type: ignore[arg-type]
    score = Assessment(Toxicity.CAR_HEMATOTOX, "car-hematotox-score", State.NOT_ASSESSABLE, None, datetime.now())
    cr.scores[Toxicity.CAR_HEMATOTOX] = score
    assert cr.hematotox is score
