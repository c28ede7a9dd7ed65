"""CRS hypoxia, grades 2-4 (ASTCT 2019, Lee et al. 2019, CRS grading table; grading.md 1.4 and decision 5):
oxygen support by device and flow, a nasal cannula without a flow proving only "at least 2"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from ...model import Quantity, Reading
from ...tables import DeviceRow
from ..result import Component
from .finding import Finding

FLOW_MISSING = "oxygen flow rate (LOINC 3151-8)"
_CANNULA = ("nasal-cannula",)  # a flow recorded without a device (input-contract.md oxygen tiers)


def _unknown_flow(row: DeviceRow) -> tuple[int, int]:
    """'at-least-2' -> (2, grade_high); '3' -> (3, 3)."""
    spec = row.unknown_flow or ""
    if spec.startswith("at-least-"):
        return int(spec.removeprefix("at-least-")), int(row.grade_high or 0)
    return int(spec), int(spec)


def _device_range(row: DeviceRow, flow: Quantity | None, low_flow_max: float) -> tuple[tuple[int, int], str]:
    """The grades one device at one flow can mean, and its tier (decision 5)."""
    if not row.by_flow:
        grade = int(row.grade or 0)
        return (grade, grade), row.tier
    above = flow.above(low_flow_max) if flow is not None else None
    if above is None:
        rng = _unknown_flow(row)
        return rng, row.tier if rng[0] == rng[1] else "unknown-flow"
    if above:
        return (int(row.grade_high or 0),) * 2, "high-flow"
    return (int(row.grade_low or 0),) * 2, "low-flow"


Fixed = Mapping[str, tuple[tuple[int, int], str]]  # device -> (grade range, tier), for devices graded without flow


def fixed_ranges(devices: Mapping[str, DeviceRow]) -> Fixed:
    """_device_range() of every device whose grade does not depend on the flow: built once per grader, as
    oxygen_range() asks it for every oxygen reading (room air, mostly)."""
    return {name: _device_range(row, None, 0.0) for name, row in devices.items() if not row.by_flow}


def oxygen_range(readings: Sequence[Reading], devices: Mapping[str, DeviceRow], fixed: Fixed,
                 low_flow_max: float) -> tuple[int, int, str, list[Reading], list[str]]:
    """(lowest, highest) grade the day's oxygen support can mean, its tier, the evidence, and flags.

    Device and flow recorded at the same time are one reading; a flow with no device is a nasal
    cannula, a device with no flow is taken at its own tier (input-contract.md oxygen tiers).
    `fixed`: fixed_ranges(devices).
    """
    by_time: dict[datetime, list[Reading]] = {}
    for r in readings:
        group = by_time.get(r.when.at)
        if group is None:
            by_time[r.when.at] = [r]
        else:
            group.append(r)
    best: tuple[int, int] = (0, 0)
    tier: str = "none"
    evidence: list[Reading] = []
    flags: list[str] = []
    for group in by_time.values():
        flow: Quantity | None = None  # the highest flow of the group (the first of equal ones)
        devs: list[str] = []
        for r in group:
            if r.concept == "oxygen-flow":
                v = r.value
                if isinstance(v, Quantity) and (flow is None or v.value > flow.value):
                    flow = v
            elif r.concept == "oxygen-device":
                devs.append(str(r.value))
        for dev in devs or _CANNULA:
            found = fixed.get(dev)
            if found is not None:
                rng, dev_tier = found  # its own tier: never "low-flow" for a high-flow device
            else:
                row = devices[dev]
                rng, dev_tier = _device_range(row, flow, low_flow_max)
                if dev_tier == "low-flow" and row.tier == "high-flow":
                    flags.append("hfnc-at-low-flow")  # grading.md 1.4: graded by flow, flagged
            if rng > best or (rng == best and tier == "none"):
                best, tier, evidence = rng, dev_tier, group  # the group's list is not changed after this
    return best[0], best[1], tier, evidence, flags


def hypoxia(oxygen: Sequence[Reading], devices: Mapping[str, DeviceRow], fixed: Fixed,
            low_flow_max: float) -> Finding:
    """The day's hypoxia grade range from its oxygen support; an unknown flow names the flow as missing."""
    lo, hi, tier, ev, flags = oxygen_range(oxygen, devices, fixed, low_flow_max)
    shown = bool(oxygen) and tier != "none"
    return Finding(lo, hi, min((r.when.at for r in oxygen), default=None) if lo else None,
                   (Component("hypoxia", "oxygen-tier", tier, lo),) if oxygen else (),
                   tuple(r.ref for r in ev) if shown else (),
                   reasons=(f"oxygen support: {tier} (grade {lo}{'+' if hi > lo else ''})",) if shown else (),
                   flags=tuple(flags), missing=(FLOW_MISSING,) if hi > lo else ())
