"""The output's shared parts (output/shared.py, output/templates.py): read-only, and never changed by what
reads the resources (write-back planning, transactions, validation, summaries), run after run."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import RECORDED

from cart_fhir.ingest.read import read_paths
from cart_fhir.output.shared import SharedDict, SharedList, shared
from cart_fhir.pipeline import Engine
from cart_fhir.remote.changes import content_hash, with_hash
from cart_fhir.remote.outcome import PatientWrite
from cart_fhir.remote.plan import plan
from cart_fhir.remote.write import _rewrite
from cart_fhir.summary import episode_rows
from cart_fhir.validate import validate_resources

REPO = Path(__file__).resolve().parent.parent

CHANGES: list[tuple[str, Callable[[Any], Any]]] = [
    ("dict-setitem", lambda d: d.__setitem__("code", "x")),
    ("dict-delitem", lambda d: d.__delitem__("code")),
    ("dict-update", lambda d: d.update(code="x")),
    ("dict-ior", lambda d: d.__ior__({"code": "x"})),
    ("dict-setdefault", lambda d: d.setdefault("new", 1)),
    ("dict-pop", lambda d: d.pop("code")),
    ("dict-popitem", lambda d: d.popitem()),
    ("dict-clear", lambda d: d.clear()),
    ("list-setitem", lambda d: d["coding"].__setitem__(0, {})),
    ("list-delitem", lambda d: d["coding"].__delitem__(0)),
    ("list-append", lambda d: d["coding"].append({})),
    ("list-extend", lambda d: d["coding"].extend([{}])),
    ("list-iadd", lambda d: d["coding"].__iadd__([{}])),
    ("list-imul", lambda d: d["coding"].__imul__(2)),
    ("list-insert", lambda d: d["coding"].insert(0, {})),
    ("list-pop", lambda d: d["coding"].pop()),
    ("list-remove", lambda d: d["coding"].remove(d["coding"][0])),
    ("list-clear", lambda d: d["coding"].clear()),
    ("list-sort", lambda d: d["coding"].sort()),
    ("list-reverse", lambda d: d["coding"].reverse()),
    ("nested-dict", lambda d: d["coding"][0].__setitem__("code", "x")),
]


def _part() -> Any:
    return shared({"code": "c", "coding": [{"system": "s", "code": "c"}, {"system": "s", "code": "d"}]})


@pytest.mark.parametrize("change", [pytest.param(f, id=name) for name, f in CHANGES])
def test_shared_parts_refuse_changes(change: Callable[[Any], Any]) -> None:
    part = _part()
    with pytest.raises(TypeError, match="shared output template"):
        change(part)
    assert part == {"code": "c", "coding": [{"system": "s", "code": "c"}, {"system": "s", "code": "d"}]}


def test_shared_parts_serialise_and_copy_as_plain_json() -> None:
    part = _part()
    plain = {"code": "c", "coding": [{"system": "s", "code": "c"}, {"system": "s", "code": "d"}]}
    for option in (None, orjson.OPT_INDENT_2, orjson.OPT_SORT_KEYS):
        assert orjson.dumps(part, option=option) == orjson.dumps(plain, option=option)
    deep = copy.deepcopy(part)  # the caller's to change, all the way down
    assert deep == plain and type(deep) is dict and type(deep["coding"]) is list and type(deep["coding"][0]) is dict
    deep["coding"][0]["code"] = "x"
    assert type(copy.copy(part)) is dict and part["coding"][0]["code"] == "c"
    back = pickle.loads(pickle.dumps(part))  # the stream workers send results between processes
    assert back == plain and type(back) is SharedDict and type(back["coding"]) is SharedList
    mine = dict(part)
    mine["code"] = "x"  # a copy is the caller's to change
    assert part["code"] == "c"


@pytest.fixture(scope="module")
def graded() -> tuple[Engine, Any]:
    engine = Engine(strict=False)
    return engine, engine.grade(read_paths([REPO / "examples"]))


def test_readers_leave_the_output_unchanged(graded: tuple[Engine, Any]) -> None:
    """Every reader of the written resources (transaction Bundle, write-back plan with content-hash tags and
    reference rewriting, R4B validation, summaries), then a second run of the same engine: the bytes of
    both runs are those of the first, read before anything else touched the resources."""
    engine, result = graded
    device, groups = engine.resources_by_patient(result, RECORDED)
    written = [device, *(w for g in groups for w in g.resources)]
    before = orjson.dumps(engine.bundle(written))
    assert any(type(v) is SharedDict for w in written for v in w.resource.values())  # shared parts in use

    engine.bundle(written, "transaction")
    for group in groups:
        ops = plan(group, {}, PatientWrite(group.patient_key), resolved={}, url_of=lambda w: w.condition, run="r")
        local = {device.full_url, *(w.full_url for w in group.resources)}
        for op in ops:
            if op.body is not None:
                body = _rewrite(op.body, {}, local)
                body["id"] = "x"
                body["meta"] = {k: v for k, v in body["meta"].items() if k != "versionId"}
        for w in group.resources:
            with_hash(w.resource, content_hash(w.resource))
    validate_resources([w.resource for w in written])
    episode_rows(result)

    assert orjson.dumps(engine.bundle(written)) == before
    again = engine.resources(result, RECORDED)
    assert orjson.dumps(engine.bundle(again)) == before
