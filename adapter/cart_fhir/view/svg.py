"""Inline SVG for the evidence lanes and treatment markers, drawn on the same day grid as the grade cells.

Hand-written rather than a charting library: the lanes are a few polylines, threshold lines, text and bars
on a shared day axis; a library (vendored JS) would add >100 KB to every page, need the page's script to
draw anything (no picture in a print or a no-script viewer), and still need this alignment code.
"""

from __future__ import annotations

import math
from html import escape

from .evidence import KINDS, EvidenceLane, Marker

DAY_W = 28  # px per day: must equal --day-w in timeline.css
CHART_H = 56
TEXT_H = 26
PAD = 6


def _x(day: float, first: int) -> float:
    return round((day - first) * DAY_W, 1)


def lane_svg(lane: EvidenceLane, first: int, last: int) -> str:
    """One evidence lane as an <svg role="img"> whose aria-label is the lane's text alternative."""
    width = (last - first + 1) * DAY_W
    height = CHART_H if lane.kind == "chart" else TEXT_H
    body = []
    if lane.empty:
        body.append(f'<text x="4" y="{height / 2 + 4:.0f}" class="nodata">no data</text>')
    elif lane.kind == "chart":
        body.extend(_chart(lane, first, last, height))
    elif lane.kind == "bars":
        for b in lane.bars:
            x0, x1 = _x(b.start, first), _x(b.end, first)
            body.append(f'<rect class="bar" x="{x0}" y="5" width="{max(x1 - x0, 3):.1f}" height="{TEXT_H - 10}">'
                        f'<title>{escape(b.label)}: days {b.start:.2f} to {b.end:.2f}</title></rect>')
            body.append(f'<text class="barlabel" x="{x0 + 2}" y="{TEXT_H - 9}">{escape(b.label)}</text>')
    else:
        for m in lane.marks:
            x = _x(m.day + 0.5, first)
            cls = "mark alert" if m.alert else "mark"
            body.append(f'<text class="{cls}" x="{x}" y="{TEXT_H - 9}" text-anchor="middle">{escape(m.text)}'
                        f'<title>{escape(m.title)}</title></text>')
    return (f'<svg class="ev ev-{lane.key}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(lane.summary())}" focusable="false">{"".join(body)}</svg>')


def _chart(lane: EvidenceLane, first: int, last: int, height: int) -> list[str]:
    values = [p.value for p in lane.points] + [t for t, _ in lane.thresholds]
    f = (lambda v: math.log10(max(v, 1.0))) if lane.log else (lambda v: v)
    lo, hi = min(f(v) for v in values), max(f(v) for v in values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    span = hi - lo

    def y(v: float) -> float:
        return round(height - PAD - (f(v) - lo) / span * (height - 2 * PAD), 1)

    out = []
    width = (last - first + 1) * DAY_W
    for value, label in lane.thresholds:
        yy = y(value)
        out.append(f'<line class="thr" x1="0" x2="{width}" y1="{yy}" y2="{yy}"/>'
                   f'<text class="thrlabel" x="2" y="{yy - 2}">{escape(label)}</text>')
    series: dict[str, list[tuple[float, float]]] = {}
    for p in sorted(lane.points, key=lambda p: p.day):
        series.setdefault(p.series, []).append((_x(p.day, first), y(p.value)))
    for name, pts in series.items():
        if len(pts) > 1:
            path = " ".join(f"{x},{yy}" for x, yy in pts)
            out.append(f'<polyline class="line{" alt" if name == "MAP" else ""}" points="{path}"/>')
    for p in lane.points:
        x, yy = _x(p.day, first), y(p.value)
        if p.series == "MAP":
            out.append(f'<rect class="pt alt" x="{x - 2.5}" y="{yy - 2.5}" width="5" height="5">'
                       f'<title>{escape(p.text)}</title></rect>')
        else:
            out.append(f'<circle class="pt" cx="{x}" cy="{yy}" r="2.5"><title>{escape(p.text)}</title></circle>')
    return out


_SHAPES = {
    "tocilizumab": "M{x},{t} l5,9 h-10 z",  # triangle
    "corticosteroid": "M{x},{t} l5,4.5 l-5,4.5 l-5,-4.5 z",  # diamond
    "idm": "M{x0},{t} h9 l-4.5,9 z",  # down triangle
}
_SQUARE = "M{x0},{t} h8 v8 h-8 z"
ROW_H = 13


def markers_svg(markers: list[Marker], first: int, last: int) -> str:
    """One row per kind of treatment present; the marker at its first time that day, its label beside it."""
    width = (last - first + 1) * DAY_W
    kinds = [k for k in KINDS if any(m.kind == k for m in markers)]
    height = max(ROW_H * len(kinds), ROW_H) + 4
    body = []
    for m in markers:
        x = _x(m.day, first)
        top = 2 + ROW_H * kinds.index(m.kind)
        shape = _SHAPES.get(m.kind, _SQUARE).format(x=x, x0=x - 4, t=top + 1)
        body.append(f'<g class="tx tx-{m.kind}"><path d="{shape}"/><text x="{x + 6}" y="{top + 9}">'
                    f'{escape(m.label)}</text><title>{escape(m.title)}</title></g>')
    if not markers:
        body.append(f'<text x="4" y="{height / 2 + 4:.0f}" class="nodata">none recorded</text>')
    label = "Treatments: " + ("; ".join(m.title for m in markers) or "none recorded")
    return (f'<svg class="ev ev-treatments" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(label)}" focusable="false">{"".join(body)}</svg>')
