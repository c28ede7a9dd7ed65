"""The timeline as one self-contained HTML document: inline CSS, JavaScript and SVG, no network, no fonts.

Machine-readable by design (issue 17): every grade cell carries data-toxicity (summary-row name), data-day
and data-grade or data-state; each patient section carries data-patient.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from functools import cache
from html import escape
from importlib import resources

from .labels import LANES, lane_label
from .model import Cell, CourseView, Detail, PatientView
from .svg import DAY_W, lane_svg, markers_svg

LinkFor = Callable[[CourseView], str]


@cache
def asset(name: str) -> str:
    """A file of view/static/, shipped inside the wheel."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def script_hash() -> str:
    """CSP hash source of the inline script, so the service can forbid every other script."""
    digest = hashlib.sha256(asset("timeline.js").encode()).digest()
    return "sha256-" + base64.b64encode(digest).decode()


def document(patients: list[PatientView], *, title: str, subtitle: str = "", index_links: LinkFor | None = None,
             with_index: bool | None = None, focus_infusion: str | None = None) -> str:
    """The page: a cohort index when there are several patients or courses, then one section per patient."""
    courses = [c for p in patients for c in p.courses]
    show_index = with_index if with_index is not None else len(courses) > 1
    parts = [_head(title), '<body><a class="skip" href="#main">Skip to the timelines</a>',
             f'<header><h1>{escape(title)}</h1>' + (f'<p class="sub">{escape(subtitle)}</p>' if subtitle else "")
             + _legend() + "</header>", '<main id="main">']
    if show_index:
        parts.append(index_table(patients, index_links or (lambda c: f"#{c.anchor}")))
    if not courses:
        parts.append('<p class="empty">No graded CAR-T infusion in this input.</p>')
    for p in patients:
        parts.append(patient_section(p, focus_infusion))
    parts.append(f"</main><script>{asset('timeline.js')}</script></body></html>")
    return "".join(parts)


def index_document(patients: list[PatientView], *, title: str, subtitle: str, link_for: LinkFor) -> str:
    """The cohort index alone (--out-dir): one row per patient and infusion, linking to each timeline file."""
    return "".join([_head(title), '<body><header>', f"<h1>{escape(title)}</h1>",
                    f'<p class="sub">{escape(subtitle)}</p></header><main id="main">',
                    index_table(patients, link_for), "</main></body></html>"])


def _head(title: str) -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><style>{asset("timeline.css")}</style></head>')


def _legend() -> str:
    items = [('g0', "0", "grade 0"), ('g1', "1", "grade 1"), ('g2', "2", "grade 2"), ('g3', "3", "grade 3"),
             ('g4', "4", "grade 4"), ('g5', "5", "grade 5"), ('g2 atleast', "\u22652", "at least grade 2"),
             ('na', "?", "not assessable")]
    cells = "".join(f'<li><span class="swatch {cls}" aria-hidden="true">{txt}</span> {escape(label)}</li>'
                    for cls, txt, label in items)
    return (f'<ul class="legend" aria-label="Colour key">{cells}'
            '<li><span class="swatch onset" aria-hidden="true"></span> onset</li>'
            '<li><span class="swatch resolved" aria-hidden="true">\u2713</span> resolved</li>'
            '<li>Treatments: \u25b2 tocilizumab, \u25c6 corticosteroid (mg that day), \u25bc IDM, \u25a0 anakinra '
            '(A), anti-infective (I), other (+)</li></ul>')


def index_table(patients: Iterable[PatientView], link_for: LinkFor) -> str:
    head = "".join(f'<th scope="col">{escape(lane_label(t.value))}</th>' for t in LANES)
    rows = []
    for p in patients:
        for c in p.courses:
            # data-max-of, not data-toxicity: a tool reading grade cells by data-toxicity must not find these.
            grades = "".join(f'<td data-max-of="{t.value}">{escape(c.max_grades.get(t.value, "-"))}</td>'
                             for t in LANES)
            hx = c.hematotox.risk if c.hematotox is not None else "-"
            rows.append(f'<tr data-index-patient="{escape(p.patient_id)}" data-course="{c.number}">'
                        f'<th scope="row"><a href="{escape(link_for(c))}">{escape(p.patient_id)}</a></th>'
                        f"<td>{c.number}</td><td>{escape(c.day0)}</td><td>{escape(c.product)}</td>{grades}"
                        f"<td>{escape(hx)}</td></tr>")
    return ('<section class="index" aria-labelledby="index-h"><h2 id="index-h">Patients and infusions</h2>'
            '<table class="cohort"><caption>Maximum grade per toxicity (\u2265: a lower bound, n/a: not '
            'assessable, -: none)</caption><thead><tr><th scope="col">Patient</th><th scope="col">Infusion</th>'
            f'<th scope="col">Day 0</th><th scope="col">Product</th>{head}<th scope="col">CAR-HEMATOTOX</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def patient_section(p: PatientView, focus_infusion: str | None = None) -> str:
    nav = ""
    if len(p.courses) > 1:
        links = "".join(f'<li><a href="#{c.anchor}">Infusion {c.number} (day 0 {escape(c.day0)})</a></li>'
                        for c in p.courses)
        nav = f'<nav aria-label="Infusions of patient {escape(p.patient_id)}"><ul class="courses">{links}</ul></nav>'
    body = "".join(course_section(c, c.infusion_ref == focus_infusion) for c in p.courses) or \
        '<p class="empty">No CAR-T infusion found.</p>'
    return (f'<section class="patient" id="{p.anchor}" data-patient="{escape(p.patient_id)}" '
            f'aria-label="Patient {escape(p.patient_id)}">{nav}{body}</section>')


def course_section(c: CourseView, focus: bool = False) -> str:
    n = len(c.days)
    head = (f'<h2 id="{c.anchor}-h">Patient {escape(c.patient_id)} \u00b7 infusion {c.number}: '
            f'{escape(c.product)}</h2><p class="meta">Day 0 = {escape(c.day0)} ({escape(c.utc_offset)}); '
            f'{escape(c.infusion_ref)}; days {c.first_day} to {c.last_day}</p>')
    rows = [_axis_row(c), *(_lane_row(c, lane.toxicity, lane.label, lane.cells, lane.onsets, lane.resolutions)
                            for lane in c.lanes)]
    rows.append('<div class="sep" role="presentation"></div>')
    for ev in c.evidence:
        rows.append(f'<div class="lab ev-lab">{escape(ev.label)}{_unit(ev.unit)}</div>'
                    f'<div class="evcell">{lane_svg(ev, c.first_day, c.last_day)}</div>')
    rows.append(f'<div class="lab ev-lab">Treatments</div><div class="evcell">'
                f'{markers_svg(c.markers, c.first_day, c.last_day)}</div>')
    grid = (f'<div class="scroll" tabindex="0" role="region" aria-label="Timeline of patient '
            f'{escape(c.patient_id)}, infusion {c.number} (scrolls sideways)">'
            f'<div class="grid" style="grid-template-columns: var(--lab-w) repeat({n}, {DAY_W}px)">'
            f'{"".join(rows)}</div></div>')
    details = "".join(_template(c, cell) for lane in c.lanes for cell in lane.cells)
    panel = (f'<div class="panel" id="{c.anchor}-panel" aria-live="polite"><p class="hint">Select a grade cell '
             '(click, or Tab and the arrow keys) to see the criterion, the input values and what was missing.'
             '</p></div>')
    return (f'<section class="course" id="{c.anchor}" data-course="{c.number}"{" data-focus" if focus else ""} '
            f'data-infusion="{escape(c.infusion_ref)}" aria-labelledby="{c.anchor}-h">{head}{grid}{panel}'
            f'<div class="cards">{_reviews(c)}{_events(c)}{_hematotox(c)}{_versions(c)}</div>{details}</section>')


def _unit(unit: str) -> str:
    return f' <span class="unit">({escape(unit)})</span>' if unit else ""


def _axis_row(c: CourseView) -> str:
    cells = "".join(f'<div class="dayh{" d0" if d == 0 else ""}" aria-hidden="true">{d}</div>' for d in c.days)
    return f'<div class="lab axis-lab">Day</div>{cells}'


def _cell_id(c: CourseView, cell: Cell) -> str:
    return f"{c.anchor}-{cell.toxicity}-{cell.day}"


def _lane_row(c: CourseView, tox: str, label: str, cells: list[Cell], onsets: list[int],
              resolutions: list[int]) -> str:
    out = [f'<div class="lab tox-lab" id="{c.anchor}-{tox}-lab">{escape(label)}</div>']
    taken: set[int] = set()
    for cell in cells:
        col = cell.day - c.first_day + 2
        span = cell.day_end - cell.day + 1
        taken.update(range(cell.day, cell.day_end + 1))
        state = (f'data-state="{cell.state}"' + (f' data-grade="{cell.grade}"' if cell.grade is not None else "")
                 if cell.state != "graded" else f'data-grade="{cell.grade}"')
        cls = ["cell", _grade_class(cell)]
        extra = []
        if cell.day in onsets:
            cls.append("onset")
            extra.append("onset")
        if cell.day in resolutions:
            cls.append("resolved")
            extra.append("resolved")
        if not cell.daily:
            cls.append("span")
        label = cell.label + (f" ({', '.join(extra)})" if extra else "")
        out.append(f'<button type="button" class="{" ".join(cls)}" style="grid-column: {col} / span {span}" '
                   f'data-toxicity="{cell.toxicity}" data-day="{cell.day}" {state}'
                   + (f' data-day-end="{cell.day_end}"' if not cell.daily else "")
                   + f' data-detail="{_cell_id(c, cell)}-d" aria-label="{escape(label)}">{escape(cell.text)}'
                   + ('<span class="ok" aria-hidden="true">\u2713</span>' if "resolved" in extra else "")
                   + "</button>")
    for day in resolutions:
        if day not in taken and c.first_day <= day <= c.last_day:
            out.append(f'<span class="resmark" style="grid-column: {day - c.first_day + 2}" '
                       f'title="resolved on day {day}">\u2713<span class="sr">resolved on day {day}</span></span>')
    return "".join(out)


def _grade_class(cell: Cell) -> str:
    if cell.state == "not-assessable" or cell.grade is None:
        return "na"
    return f"g{min(max(cell.grade, 0), 5)}" + (" atleast" if cell.state == "at-least" else "")


def _template(c: CourseView, cell: Cell) -> str:
    return f'<template id="{_cell_id(c, cell)}-d">{detail_html(cell, cell.detail)}</template>'


def detail_html(cell: Cell, d: Detail) -> str:
    parts = [f"<h3>{escape(d.title)}: {escape(_state_words(cell))}</h3>"]
    if d.decided_by:
        parts.append('<p><strong>Decided by</strong></p><ul class="why">'
                     + "".join(f"<li>{escape(r)}</li>" for r in d.decided_by) + "</ul>")
    if d.missing:
        parts.append('<p class="missing"><strong>Missing input</strong></p><ul class="missing">'
                     + "".join(f"<li>{escape(m)}</li>" for m in d.missing) + "</ul>")
    if d.components:
        parts.append('<table class="dl"><caption>Domains</caption><tbody>'
                     + "".join(f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>'
                               for k, v in d.components) + "</tbody></table>")
    if d.inputs:
        rows = "".join(f"<tr><td>{escape(i.name)}</td><td>{escape(i.value)}</td><td>{escape(i.unit)}</td>"
                       f"<td>{escape(i.when)}</td><td>{escape(i.ref)}</td></tr>" for i in d.inputs)
        parts.append('<table class="inputs"><caption>Input values</caption><thead><tr><th scope="col">What</th>'
                     '<th scope="col">Value</th><th scope="col">Unit</th><th scope="col">When</th>'
                     f'<th scope="col">Source</th></tr></thead><tbody>{rows}</tbody></table>')
    if d.extra:
        parts.append('<table class="dl"><caption>Event</caption><tbody>'
                     + "".join(f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in d.extra)
                     + "</tbody></table>")
    foot = []
    if d.criteria:
        foot.append(f"criteria table {escape(d.criteria)}")
    if d.flags:
        foot.append("review flags: " + escape(", ".join(d.flags)))
    if foot:
        parts.append(f'<p class="foot">{"; ".join(foot)}</p>')
    return "".join(parts)


def _state_words(cell: Cell) -> str:
    if cell.state == "not-assessable" or cell.grade is None:
        return "not assessable"
    return f"at least grade {cell.grade}" if cell.state == "at-least" else f"grade {cell.grade}"


def _events(c: CourseView) -> str:
    later = "".join(
        f'<li data-toxicity="{cell.toxicity}" data-day="{cell.day}" data-state="{cell.state}">'
        f'{escape(cell.label)}' + (": missing " + escape("; ".join(cell.detail.missing)) if cell.detail.missing
                                   else "") + "</li>" for cell in c.off_axis)
    heading = "Not on the day axis (windows after the last day with data; IAGO long-term effects):"
    later = f'<p>{heading}</p><ul class="later">{later}</ul>' if later else ""
    if not c.events:
        return ('<section class="card"><h3>Events and attribution</h3><p>No IEC-HS, ICAHT, infection or other '
                f'neurotoxicity event.</p>{later}</section>')
    rows = []
    for e in c.events:
        details = "; ".join(f"{k}: {v}" for k, v in e.details)
        attribution = "<br>".join(escape(a) for a in e.attribution) or "-"
        rows.append(f'<tr data-event="{e.toxicity}"><th scope="row">{escape(lane_label(e.toxicity))}</th>'
                    f"<td>{escape(e.grade)}</td><td>{e.onset_day}</td><td>{escape(e.resolution)}</td>"
                    f"<td>{escape(details)}</td><td>{attribution}</td></tr>")
    return ('<section class="card"><h3>Events and attribution (IAGO)</h3><table><thead><tr>'
            '<th scope="col">Toxicity</th><th scope="col">Grade</th><th scope="col">Onset day</th>'
            '<th scope="col">Resolved</th><th scope="col">Details</th><th scope="col">Attribution</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{later}</section>')


def _reviews(c: CourseView) -> str:
    """A clinician's reviews of our results on the record: their grade first, cart-fhir's beside it."""
    if not c.reviews:
        return ""
    rows = "".join(
        f'<tr data-review="{escape(r.verdict)}" data-toxicity="{escape(r.toxicity)}">'
        f'<th scope="row">{escape(lane_label(r.toxicity))}</th>'
        f'<td>{"-" if r.onset_day is None else r.onset_day}</td><td>{escape(r.shown)}</td>'
        f"<td>{escape(r.ref)}</td></tr>" for r in c.reviews)
    return ('<section class="card reviews"><h3>Clinician review</h3><p>Results a clinician confirmed, refuted or '
            "changed on the record: their word stands (cart-fhir does not overwrite it); a refuted result is not "
            "an active toxicity. The day lanes above show cart-fhir's own daily grades.</p><table><thead><tr>"
            '<th scope="col">Toxicity</th><th scope="col">Onset day</th><th scope="col">Clinician (cart-fhir)</th>'
            f'<th scope="col">Result</th></tr></thead><tbody>{rows}</tbody></table></section>')


def _hematotox(c: CourseView) -> str:
    hx = c.hematotox
    if hx is None:
        return ""
    score = "not assessable" if hx.score is None or hx.state == "not-assessable" else str(hx.score)
    items = "".join(f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in hx.items)
    missing = ("<p><strong>Missing</strong></p><ul>" + "".join(f"<li>{escape(m)}</li>" for m in hx.missing)
               + "</ul>") if hx.missing else ""
    reasons = "".join(f"<li>{escape(r)}</li>" for r in hx.reasons)
    return (f'<section class="card hematotox" data-state="{escape(hx.state)}"><h3>CAR-HEMATOTOX</h3>'
            f'<p>Score <strong>{escape(score)}</strong>, risk <strong>{escape(hx.risk)}</strong></p>'
            + (f'<table class="dl"><caption>Items (points)</caption><tbody>{items}</tbody></table>' if items else "")
            + missing + (f'<ul class="why">{reasons}</ul>' if reasons else "")
            + f'<p class="foot">criteria table {escape(hx.criteria)}</p></section>')


def _versions(c: CourseView) -> str:
    rows = "".join(f"<li>{escape(k)} v{escape(v)}</li>" for k, v in c.versions)
    return f'<section class="card versions"><h3>Criteria versions</h3><ul>{rows}</ul></section>'
