"""docs/criteria.md (issue 13 item 8): generated from mappings/ and current; every anchor the citations need
exists; the READMEs point at it, not at specification files outside the repository."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "criteria.md"
TOXICITY_ANCHORS = ["crs", "icans", "iec-hs", "icaht", "car-hematotox", "infections", "neurotoxicity-other",
                    "treatments", "decisions"]
READMES = [REPO / "README.md", REPO / "examples" / "README.md", REPO / "mappings" / "README.md"]


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_criteria", REPO / "docs" / "build_criteria.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', DOC.read_text(encoding="utf-8")))


def test_committed_file_is_current() -> None:
    """Edit docs/criteria.in.md or mappings/, then run `python docs/build_criteria.py`."""
    assert _builder().build() == DOC.read_text(encoding="utf-8"), "docs/criteria.md is stale"


def test_the_anchors_citations_need_exist() -> None:
    anchors = _anchors()
    expected = {*TOXICITY_ANCHORS, "input-contract", "output-contract", *(f"decision-{n}" for n in range(1, 13))}
    assert expected <= anchors


@pytest.mark.parametrize("path", [*READMES, REPO / "profiles" / "README.md",
                                  *sorted((REPO / "mappings").glob("*.json"))],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_into_the_criteria_resolves(path: Path) -> None:
    links = re.findall(r"docs/criteria\.md#([A-Za-z0-9-]+)|\(criteria\.md#([A-Za-z0-9-]+)\)|\(\.\./docs/criteria\.md#"
                       r"([A-Za-z0-9-]+)\)", path.read_text(encoding="utf-8"))
    targets = {next(x for x in groups if x) for groups in links}
    assert targets - _anchors() == set()


@pytest.mark.parametrize("path", READMES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_readmes_cite_nothing_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"shared/spec|grading\.md|(?:input|output)-contract\.md", text) == []


def test_every_specification_section_cited_in_code_and_tables_has_an_entry() -> None:
    """So repointing `grading.md N.N` to docs/criteria.md#spec-N-N always lands on an entry."""
    builder = _builder()
    texts = [p.read_text(encoding="utf-8") for p in [*(REPO / "adapter").rglob("*.py"), *(REPO / "mappings").iterdir()]
             if p.is_file()]
    cited = {m.group(1) for text in texts for m in builder.SECTION_REF.finditer(text)}
    assert cited
    known = builder.SPEC_SECTIONS
    assert sorted(n for n in cited if n not in known and n.split(".")[0] not in known) == []
    assert {builder.anchor(n) for n in builder.SPEC_SECTIONS} <= _anchors()


def test_a_table_missing_from_the_template_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = _builder()
    shutil.copytree(REPO / "mappings", tmp_path, dirs_exist_ok=True)
    (tmp_path / "new-table.yaml").write_text("table: x\nversion: 1\nsource: y\nrows: []\n", encoding="utf-8")
    monkeypatch.setattr(builder, "MAPPINGS", tmp_path)
    with pytest.raises(builder.BuildError, match="new-table.yaml"):
        builder.build()
