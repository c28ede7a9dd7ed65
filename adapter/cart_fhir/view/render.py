"""From an engine and its run result to timeline pages: the one entry point the CLI and the service share."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..pipeline import Engine, RunResult
from .labels import display_unit
from .model import CourseView, PatientView, build_patients
from .page import LinkFor, document, index_document


def engine_units(engine: Engine) -> dict[str, str]:
    """Each quantity concept's canonical unit from the engine's concept table (mappings/concepts.yaml)."""
    rows: Iterable[Any] = getattr(getattr(engine.tables, "concepts", None), "rows", ())
    return {r.concept: display_unit(r.unit) for r in rows if getattr(r, "unit", None)}


def patient_views(engine: Engine, result: RunResult, patients: Iterable[str] | None = None) -> list[PatientView]:
    attributor = getattr(engine, "attributor", None)
    return build_patients(result, versions=engine.versions, units=engine_units(engine),
                          attribute=attributor.suspects if attributor is not None else None, patients=patients)


def subtitle(generated: datetime | None = None) -> str:
    when = (generated or datetime.now(UTC)).replace(microsecond=0).isoformat()
    return (f"Graded by cart-fhir {__version__} on {when} from the data in the record (preliminary, engine "
            "computed): review before acting.")


def report_html(views: list[PatientView], *, title: str = "CAR-T toxicity timeline",
                generated: datetime | None = None, index_links: LinkFor | None = None,
                with_index: bool | None = None, focus_infusion: str | None = None) -> str:
    return document(views, title=title, subtitle=subtitle(generated), index_links=index_links,
                    with_index=with_index, focus_infusion=focus_infusion)


def index_html(views: list[PatientView], link_for: LinkFor, *, title: str = "CAR-T toxicity timelines",
               generated: datetime | None = None) -> str:
    return index_document(views, title=title, subtitle=subtitle(generated), link_for=link_for)


def patient_file_name(view: PatientView) -> str:
    return f"patient-{view.anchor.removeprefix('p-')}.html"


def course_link(view: PatientView, course: CourseView) -> str:
    return f"{patient_file_name(view)}#{course.anchor}"
