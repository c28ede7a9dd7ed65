"""Evidence lanes under the grades: the input values the grades came from, arranged by day (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..model import DrugAdmin, Quantity, Reading
from ..timeline import Course
from .labels import CONCEPT_LABELS, fmt_number

# Oxygen devices from least to most support (mappings/astct-crs-2019.yaml oxygen devices), with short labels.
DEVICES = {"room-air": "RA", "blow-by": "BB", "nasal-cannula": "NC", "high-flow-nasal-cannula": "HFNC",
           "simple-face-mask": "FM", "non-rebreather-mask": "NRB", "venturi-mask": "VM", "cpap": "CPAP",
           "bipap": "BiPAP", "mechanical-ventilation": "MV"}
CONSCIOUSNESS = ("alert", "awakens-spontaneously", "awakens-to-voice", "awakens-to-tactile", "stuporous",
                 "coma", "unarousable")
INTRATHECAL = "72607000"  # SNOMED CT route: intrathecal (IDM when dexamethasone/methotrexate)
TREATMENT_ROLES = ("anti-cytokine", "corticosteroid", "intrathecal-candidate", "hlh-directed", "anti-infective")
VASOPRESSOR_ROLES = ("vasopressor", "vasopressin", "inotrope")


@dataclass(frozen=True, slots=True)
class Point:
    day: float  # day number + fraction of the local day
    value: float
    text: str  # the value as read, unit and time, for the tooltip
    series: str = ""


@dataclass(frozen=True, slots=True)
class TextMark:
    day: int
    text: str
    title: str
    alert: bool = False  # abnormal (drawn emphasised)


@dataclass(frozen=True, slots=True)
class Bar:
    start: float
    end: float
    label: str


@dataclass(frozen=True, slots=True)
class Marker:
    day: float
    kind: str  # tocilizumab | corticosteroid | anakinra | idm | anti-infective | other
    label: str
    title: str


@dataclass(slots=True)
class EvidenceLane:
    key: str
    label: str
    kind: str  # chart | text | bars
    unit: str = ""
    points: list[Point] = field(default_factory=list)
    thresholds: tuple[tuple[float, str], ...] = ()
    log: bool = False
    marks: list[TextMark] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.points or self.marks or self.bars)

    def summary(self) -> str:
        """The lane's text alternative (screen readers, and what a test can read)."""
        if self.empty:
            return f"{self.label}: no data"
        if self.kind == "chart":
            by_day: dict[int, list[Point]] = {}
            for p in self.points:
                by_day.setdefault(int(p.day // 1), []).append(p)
            parts = []
            for day, pts in sorted(by_day.items()):
                lo, hi = min(p.value for p in pts), max(p.value for p in pts)
                parts.append(f"day {day} {fmt_number(lo)}" + (f"-{fmt_number(hi)}" if hi != lo else ""))
            return f"{self.label} ({self.unit}): " + "; ".join(parts)
        if self.kind == "bars":
            return f"{self.label}: " + "; ".join(f"{b.label} days {b.start:.1f}-{b.end:.1f}" for b in self.bars)
        return f"{self.label}: " + "; ".join(m.title for m in self.marks)


def fraction_of_day(course: Course, at: datetime, date_only: bool = False) -> float:
    """Day number plus the fraction of the local day elapsed (noon for a bare date)."""
    day = (at.date() - course.infusion.day0).days if date_only else \
        (at.astimezone(course.tz).date() - course.infusion.day0).days
    if date_only:
        return day + 0.5
    local = at.astimezone(course.tz)
    return day + (local.hour * 3600 + local.minute * 60 + local.second) / 86400


def _readings(course: Course, first: int, last: int) -> dict[str, list[tuple[int, Reading]]]:
    out: dict[str, list[tuple[int, Reading]]] = {}
    for day, r in [*course.pre_readings, *course.readings]:
        if first <= day <= last:
            out.setdefault(r.concept, []).append((day, r))
    return out


def _local(course: Course, r: Reading) -> str:
    if r.when.date_only:
        return r.when.at.date().isoformat()
    return f"{r.when.at.astimezone(course.tz):%Y-%m-%d %H:%M}"


def _chart(course: Course, key: str, label: str, unit: str, pairs: list[tuple[int, Reading]], series: str = "",
           pick: str = "", **kw: object) -> EvidenceLane:
    lane = EvidenceLane(key, label, "chart", unit, **kw)  # type: ignore[arg-type]
    lane.points.extend(_points(course, _daily(pairs, pick) if pick else pairs, unit, series))
    return lane


def _daily(pairs: list[tuple[int, Reading]], pick: str) -> list[tuple[int, Reading]]:
    """The day's highest ("max") or lowest ("min") reading: what CRS grading reads of temperature and BP."""
    best: dict[int, tuple[float, tuple[int, Reading]]] = {}
    for day, r in pairs:
        if not isinstance(r.value, Quantity):
            continue
        v = r.value.value if pick == "max" else -r.value.value
        if day not in best or v > best[day][0]:
            best[day] = (v, (day, r))
    return [pair for _, pair in sorted(best.values(), key=lambda t: t[1][0])]


def _points(course: Course, pairs: list[tuple[int, Reading]], unit: str, series: str = "") -> list[Point]:
    out = []
    for _, r in pairs:
        if isinstance(r.value, Quantity):
            v = r.value
            label = f"{series} " if series else ""
            text = f"{label}{v.comparator or ''}{fmt_number(v.value)} {unit} at {_local(course, r)}"
            out.append(Point(fraction_of_day(course, r.when.at, r.when.date_only), v.value, text, series))
        elif isinstance(r.value, int) and not isinstance(r.value, bool):
            out.append(Point(fraction_of_day(course, r.when.at, r.when.date_only), float(r.value),
                             f"{series + ' ' if series else ''}{r.value} at {_local(course, r)}", series))
    return out


def evidence_lanes(course: Course, first: int, last: int, units: Mapping[str, str]) -> list[EvidenceLane]:
    """The evidence lanes of issue 17, in its order; a lane without data is kept (it says "no data")."""
    rs = _readings(course, first, last)
    u = units.get
    temp = _chart(course, "temperature", "Max temperature", u("body-temperature", "\u00b0C"),
                  rs.get("body-temperature", []), pick="max", thresholds=((38.0, "38.0 \u00b0C"),))
    bp = _chart(course, "blood-pressure", "Lowest SBP / MAP", u("systolic-bp", "mmHg"),
                rs.get("systolic-bp", []), series="SBP", pick="min", thresholds=((90.0, "90"),))
    bp.points.extend(_points(course, _daily(rs.get("mean-bp", []), "min"), u("mean-bp", "mmHg"), "MAP"))
    lanes = [temp, bp, _vasopressors(course, first, last), _oxygen(rs), _neuro(rs), _neuro_findings(rs),
             _chart(course, "crp", "CRP", u("crp", "mg/dL"), rs.get("crp", [])),
             _chart(course, "ferritin", "Ferritin", u("ferritin", "ng/mL"), rs.get("ferritin", []), log=True),
             _chart(course, "anc", "ANC", u("anc", "/\u00b5L"), rs.get("anc", []), log=True,
                    thresholds=((500.0, "500"), (100.0, "100"))),
             _chart(course, "platelets", "Platelets", u("platelets", "/\u00b5L"), rs.get("platelets", []), log=True,
                    thresholds=((50000.0, "50,000"), (20000.0, "20,000")))]
    return lanes


def _vasopressors(course: Course, first: int, last: int) -> EvidenceLane:
    lane = EvidenceLane("vasopressors", "Vasopressors", "bars")
    for d in course.drugs:
        if d.role not in VASOPRESSOR_ROLES:
            continue
        start = fraction_of_day(course, d.start.at, d.start.date_only)
        if d.instant:
            end = start + 1 / 24
        elif d.end is None:
            end = last + 1.0  # still running at the end of the data
        else:
            end = fraction_of_day(course, d.end.at, d.end.date_only)
        if end >= first and start <= last + 1:
            dose = f" {fmt_number(d.dose)} {d.dose_unit or ''}".rstrip() if d.dose is not None else ""
            lane.bars.append(Bar(max(start, first), min(end, last + 1.0), f"{d.agent}{dose}"))
    return lane


def _oxygen(rs: Mapping[str, list[tuple[int, Reading]]]) -> EvidenceLane:
    lane = EvidenceLane("oxygen", "Oxygen device, flow", "text")
    days: dict[int, tuple[int, str]] = {}
    flows: dict[int, float] = {}
    for day, r in rs.get("oxygen-device", []):
        code = str(r.value)
        rank = list(DEVICES).index(code) if code in DEVICES else len(DEVICES)
        if day not in days or rank > days[day][0]:
            days[day] = (rank, code)
    for day, r in rs.get("oxygen-flow", []):
        if isinstance(r.value, Quantity):
            flows[day] = max(flows.get(day, 0.0), r.value.value)
    for day in sorted(set(days) | set(flows)):
        rank, code = days.get(day, (-1, ""))
        text = DEVICES.get(code, code) if code else "O2"
        if day in flows:
            text += f" {fmt_number(flows[day])}L"
        title = f"day {day}: most support {code or 'unknown device'}" + (
            f", highest flow {fmt_number(flows[day])} L/min" if day in flows else "")
        lane.marks.append(TextMark(day, text, title, alert=code not in ("", "room-air")))
    return lane


def _neuro(rs: Mapping[str, list[tuple[int, Reading]]]) -> EvidenceLane:
    """ICE (lowest of the day) or CAPD (highest), and the least responsive level of consciousness."""
    lane = EvidenceLane("ice-capd", "ICE / CAPD, consciousness", "text")
    ice: dict[int, int] = {}
    capd: dict[int, int] = {}
    loc: dict[int, str] = {}
    for day, r in rs.get("ice-score", []):
        if isinstance(r.value, int):
            ice[day] = min(ice.get(day, 10), r.value)
    for day, r in rs.get("capd-score", []):
        if isinstance(r.value, int):
            capd[day] = max(capd.get(day, 0), r.value)
    for day, r in rs.get("consciousness", []):
        code = str(r.value)
        rank = CONSCIOUSNESS.index(code) if code in CONSCIOUSNESS else len(CONSCIOUSNESS)
        old = loc.get(day)
        if old is None or rank > (CONSCIOUSNESS.index(old) if old in CONSCIOUSNESS else len(CONSCIOUSNESS)):
            loc[day] = code
    for day in sorted(set(ice) | set(capd) | set(loc)):
        parts, titles, alert = [], [], False
        if day in ice:
            parts.append(str(ice[day]))
            titles.append(f"lowest ICE score {ice[day]}/10")
            alert |= ice[day] < 10
        if day in capd:
            parts.append(f"C{capd[day]}")
            titles.append(f"highest CAPD score {capd[day]} (C{capd[day]})")
            alert |= capd[day] >= 9
        if day in loc and loc[day] not in ("alert", "awakens-spontaneously"):
            parts.append("\u2193")  # depressed level of consciousness (named in the title)
            alert = True
        if day in loc:
            titles.append(f"consciousness {loc[day]}")
        lane.marks.append(TextMark(day, " ".join(parts), f"day {day}: " + ", ".join(titles), alert))
    return lane


def _neuro_findings(rs: Mapping[str, list[tuple[int, Reading]]]) -> EvidenceLane:
    lane = EvidenceLane("seizure-motor", "Seizures, motor, edema", "text")
    found: dict[int, list[str]] = {}
    for concept in ("seizure", "motor", "cerebral-edema"):
        for day, r in rs.get(concept, []):
            if str(r.value) not in ("none", "absent", "False", "normal"):
                found.setdefault(day, []).append(f"{CONCEPT_LABELS[concept].lower()}: {r.value}")
    for day, items in sorted(found.items()):
        items = list(dict.fromkeys(items))
        lane.marks.append(TextMark(day, "!" if len(items) == 1 else f"!{len(items)}", f"day {day}: " + "; ".join(items),
                                   True))
    return lane


KINDS = ("tocilizumab", "corticosteroid", "anakinra", "idm", "anti-infective", "other")  # one row each


def treatment_markers(course: Course, first: int, last: int) -> list[Marker]:
    """Tocilizumab, corticosteroids with their daily dose, anakinra, IDM, anti-infectives (and other
    anti-cytokine or HLH-directed agents): one marker per day, kind and agent, each administration in its
    title (q6h dexamethasone is one marker "40" a day, not four overlapping ones)."""
    groups: dict[tuple[int, str, str], list[tuple[float, DrugAdmin]]] = {}
    for d in [*course.pre_drugs, *course.drugs]:
        if d.role not in TREATMENT_ROLES:
            continue
        day = fraction_of_day(course, d.start.at, d.start.date_only)
        if first <= day < last + 1:
            groups.setdefault((int(day // 1), _kind(d), d.agent), []).append((day, d))
    out = []
    for (day, kind, agent), given in groups.items():
        given = sorted(dict.fromkeys(given), key=lambda p: p[0])
        doses = [d.dose for _, d in given if d.dose is not None]
        units = {d.dose_unit for _, d in given if d.dose is not None}
        total = f"{fmt_number(sum(doses))}" if doses and len(units) == 1 else ""
        label = total if kind == "corticosteroid" and total else _SHORT[kind]
        items = "; ".join(_given(course, d) for _, d in given)
        summed = f" ({total} {next(iter(units)) or ''} that day)".rstrip() if total and len(given) > 1 else ""
        out.append(Marker(given[0][0], kind, label, f"day {day}: {agent}: {items}{summed}"))
    return sorted(out, key=lambda m: (m.day, KINDS.index(m.kind)))


_SHORT = {"tocilizumab": "T", "corticosteroid": "S", "anakinra": "A", "idm": "IT", "anti-infective": "I",
          "other": "+"}


def _kind(d: DrugAdmin) -> str:
    if d.route == INTRATHECAL and d.agent in ("dexamethasone", "methotrexate"):
        return "idm"
    if d.agent in ("tocilizumab", "anakinra"):
        return d.agent
    if d.role == "corticosteroid":
        return "corticosteroid"
    if d.role == "anti-infective":
        return "anti-infective"
    return "other"


def _given(course: Course, d: DrugAdmin) -> str:
    dose = f"{fmt_number(d.dose)} {d.dose_unit or ''}".rstrip() if d.dose is not None else "dose not recorded"
    when = d.start.at.date().isoformat() if d.start.date_only else f"{d.start.at.astimezone(course.tz):%H:%M}"
    intent = f", {d.intent}" if d.role == "anti-infective" and d.intent != "unknown" else ""
    return f"{dose} at {when}{intent}"
