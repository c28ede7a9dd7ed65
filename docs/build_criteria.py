"""Build docs/criteria.md from docs/criteria.in.md (hand-written) and mappings/ (generated), or --check it.

Each `<!-- tables: FILE ... -->` line of the template becomes one section per table: its source papers (DOI,
PMID), what each section of the table implements (the YAML comment above it), its rows and how many are not
verified, and the spec decisions and sections it relies on, linked to their anchors in the same document.
`<!-- spec-sections -->` becomes the index of the specification's sections that code, tables and outputs cite
as `grading.md N.N`. Run on demand: `python docs/build_criteria.py` (tests/test_criteria_doc.py fails when the
committed file is stale). Needs only the standard library and PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAPPINGS = REPO / "mappings"
TEMPLATE = HERE / "criteria.in.md"
OUTPUT = HERE / "criteria.md"
HEADER_KEYS = ("table", "version", "source")

# Section titles of the grading specification (the project's criteria research, kept outside this repository):
# the code and the output resources cite it as `grading.md N.N`; this index gives every such citation a target.
SPEC_SECTIONS = {
    "0": "Cross-cutting conventions", "0.1": "Time axis", "0.2": "Result states",
    "0.3": "Attribution (\"not attributable to any other cause\")", "0.4": "Units (convert before comparing)",
    "0.5": "Clinician override and provenance",
    "1": "Cytokine release syndrome (CRS), ASTCT consensus 2019", "1.1": "Criteria table (astct-crs-2019)",
    "1.2": "Rules", "1.3": "Inputs the CRS grader needs", "1.4": "Engine conventions where ASTCT is silent",
    "1.5": "Episode, onset, resolution, duration", "1.6": "Pseudocode", "1.7": "Boundary tests",
    "1.8": "CTCAE v5.0 Cytokine release syndrome (cross-walk only)",
    "2": "ICANS, ASTCT consensus 2019", "2.1": "ICE score (10 points)", "2.2": "Adult ICANS grade table",
    "2.3": "Rules", "2.4": "Children: CAPD-based grading", "2.5": "Inputs the ICANS grader needs",
    "2.6": "Engine conventions and edge cases", "2.7": "Pseudocode",
    "3": "IEC-HS (ASTCT 2023)", "3.1": "Definition and criteria (unverified)", "3.2": "Grades (unverified)",
    "3.3": "Recommended implementation", "3.4": "Related reference criteria",
    "4": "ICAHT (EHA/EBMT 2023)", "4.1": "Early ICAHT (day 0 to day +30)", "4.2": "Late ICAHT (after day +30)",
    "4.3": "Rules for counting", "4.4": "Inputs", "4.5": "Edge cases", "4.6": "Thrombocytopenia variant (T-ICAHT)",
    "4.7": "CTCAE comparison",
    "5": "CAR-HEMATOTOX score (2021)", "5.1": "Score table (car-hematotox-2021)", "5.2": "Rules and inputs",
    "6": "Infections after CAR-T", "6.1": "What an infection record must hold",
    "6.2": "CTCAE v5.0 infection terms", "6.3": "Five-level infection severity (BMT CTN-derived)",
    "6.4": "IAGO framework (Nat Med 2025)",
    "7": "Non-ICANS neurotoxicity", "7.1": "Event to CTCAE v5.0 mapping", "7.2": "Rules for the engine",
    "8": "Treatments and response definitions", "8.1": "Agents", "8.2": "How treatment changes grading",
    "8.3": "Steroid-refractory CRS / ICANS", "8.4": "Response definitions",
    "8.5": "Intrathecal dexamethasone + methotrexate (IDM) study, 2025",
    "9": "CTCAE v5.0 general definitions (fallback)", "9.1": "General grade scale",
    "9.2": "Selected laboratory and vital-sign terms",
    "10": "Code tables", "10.1": "LOINC", "10.2": "ICD-10-CM", "10.3": "NCI Thesaurus", "10.4": "MedDRA",
    "10.5": "SNOMED CT", "10.6": "RxNorm and NDC", "10.7": "Local codes",
    "11": "Open questions and recommended resolutions", "11.1": "Sparse time series", "11.2": "Day 0",
    "11.3": "Fever gate (R2)", "11.4": "Hypotension number", "11.5": "Oxygen data quality",
    "11.6": "ICE vs CAPD age cut-off", "11.7": "Resolution / duration", "11.8": "ICAHT counting",
    "11.9": "CAR-HEMATOTOX cut-offs and timing", "11.10": "IEC-HS criteria and grades are unverified",
    "11.11": "Attribution", "11.12": "Concurrent toxicities", "11.13": "Paraparesis", "11.14": "Refractory",
    "11.15": "Grade 5", "11.16": "CTCAE version", "11.17": "No standard codes",
    "11.18": "NCCN '>38 C' footnote", "11.19": "Infection episodes", "11.20": "Other immune effector therapies",
}

DOI = re.compile(r"(?:doi:\s*|https?://doi\.org/)(10\.\d{4,9}/[^\s,;)\"']+)", re.IGNORECASE)
PMID = re.compile(r"PMID:?\s*(\d{6,9})")
SECTION_REF = re.compile(r"(?:shared/spec/)?grading\.md(?:\s+(?:sections?|§)\s*|\s*§\s*|\s+)(\d{1,2}(?:\.\d{1,2})?)")
DECISION_REF = re.compile(r"\bdecisions?\s+(\d{1,2})(?![.\d])(?:\s*[-–]\s*(\d{1,2})(?![.\d]))?")
LINKABLE = re.compile(r"(?P<sec>(?:shared/spec/)?grading\.md(?:\s+(?:sections?|§)\s*|\s*§\s*|\s+)"
                      r"(?P<num>\d{1,2}(?:\.\d{1,2})?))"
                      r"|(?P<dec>\bdecisions?\s+(?P<d>\d{1,2}))"
                      r"|(?P<contract>(?:shared/spec/)?(?P<which>input|output)-contract\.md)")


class BuildError(Exception):
    """The template or a table cannot be rendered (reason in the message)."""


def anchor(number: str) -> str:
    return "spec-" + number.replace(".", "-")


def sections_cited(text: str) -> set[str]:
    """Spec section numbers cited as grading.md N.N, narrowed to the ones the specification has."""
    found = set()
    for m in SECTION_REF.finditer(text):
        n = m.group(1)
        found.add(n if n in SPEC_SECTIONS else n.split(".")[0])
    return {n for n in found if n in SPEC_SECTIONS}


def decisions_cited(text: str) -> set[int]:
    out: set[int] = set()
    for m in DECISION_REF.finditer(text):
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.update(range(lo, hi + 1) if lo <= hi else (lo,))
    return {d for d in out if 1 <= d <= 12}


def linkify(text: str) -> str:
    """Citations of the specification become links into this document (one Markdown cell line)."""
    def repl(m: re.Match[str]) -> str:
        if m.group("sec"):
            n = m.group("num")
            n = n if n in SPEC_SECTIONS else n.split(".")[0]
            return f"[{m.group('sec')}](#{anchor(n)})" if n in SPEC_SECTIONS else m.group(0)
        if m.group("dec"):
            d = int(m.group("d"))
            return f"[{m.group('dec')}](#decision-{d})" if 1 <= d <= 12 else m.group(0)
        return f"[{m.group('contract')}](#{m.group('which')}-contract)"
    return LINKABLE.sub(repl, text).replace("|", "\\|").replace("\n", " ")


def comments_above(lines: list[str], key: str) -> str:
    """The table's own description of a top-level section: the comment block directly above its key, else the
    comment lines that open its body."""
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(key)}\s*:", line):
            block: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#"):
                block.insert(0, lines[j].lstrip("#").strip())
                j -= 1
            j = i + 1
            while not block and j < len(lines) and lines[j].strip().startswith("#"):
                block.append(lines[j].strip().lstrip("#").strip())
                j += 1
            return " ".join(b for b in block if b)
    return ""


def _count(node: Any) -> tuple[int, int]:
    """(entries, entries marked verified: false) of one section: rows of a list, keys of a mapping."""
    items = node if isinstance(node, list) else list(node.values()) if isinstance(node, dict) else [node]
    if isinstance(node, dict) and "verified" in node:  # one settings block
        items = [node]
    return len(items), sum(1 for it in items if _unverified(it))


def _unverified(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("verified") is False or any(_unverified(v) for k, v in node.items() if k != "verified")
    if isinstance(node, list):
        return any(_unverified(v) for v in node)
    return False


def papers(text: str) -> str:
    dois = sorted({d.rstrip(".") for d in DOI.findall(text)})
    pmids = sorted(set(PMID.findall(text)))
    parts = [f"DOI [{d}](https://doi.org/{d})" for d in dois]
    parts += [f"PMID [{p}](https://pubmed.ncbi.nlm.nih.gov/{p}/)" for p in pmids]
    return "; ".join(parts) or "none (see the source: a specification, a code system or a manual)"


def render_yaml(path: Path) -> tuple[str, str]:
    """The Markdown of one YAML table, and its full text (for the citation index)."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BuildError(f"{path.name}: {exc}") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in HEADER_KEYS):
        raise BuildError(f"{path.name}: a table needs table, version and source")
    lines = text.splitlines()
    out = [f"### `{doc['table']}` (version {doc['version']}): [mappings/{path.name}](../mappings/{path.name})", "",
           f"**Source.** {linkify(str(doc['source']))}", "", f"**Papers.** {papers(text)}", ""]
    decisions = sorted(decisions_cited(text))
    sections = sorted(sections_cited(text), key=lambda n: [int(x) for x in n.split(".")])
    out.append("**Decisions it cites.** " + (", ".join(f"[{d}](#decision-{d})" for d in decisions) or "none"))
    out.append("")
    out.append("**Specification sections it cites.** "
               + (", ".join(f"[{n}](#{anchor(n)})" for n in sections) or "none"))
    out += ["", "| Section | What it implements | Entries | Not verified |", "|---|---|---|---|"]
    for key, node in doc.items():
        if key in HEADER_KEYS:
            continue
        n, unverified = _count(node)
        what = comments_above(lines, key) or (node.get("source", "") if isinstance(node, dict) else "")
        out.append(f"| `{key}` | {linkify(str(what)) or '(no description in the table)'} | {n} | {unverified} |")
    return "\n".join(out) + "\n", text


def render_conceptmap(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cm = json.loads(text)
    out = [(f"### ConceptMap `{cm['id']}` (version {cm.get('version', '?')}): [mappings/{path.name}](../mappings/"
           f"{path.name})"), "", f"**Source.** {linkify(cm.get('description', ''))}", "",
           "| From | Code | To | Equivalence | Why |", "|---|---|---|---|---|"]
    for group in cm.get("group", []):
        for el in group.get("element", []):
            for t in el.get("target", []):
                out.append(f"| {group.get('source', '')} | `{el['code']}` {el.get('display', '')} | "
                           f"{group.get('target', '').rsplit('/', 1)[-1]}#{t.get('code')} | {t.get('equivalence')} | "
                           f"{linkify(t.get('comment', ''))} |")
    return "\n".join(out) + "\n", text


def render_sections(cited: dict[str, list[str]]) -> str:
    """One anchor per specification section, with the tables that cite it."""
    out = ["| § | Title | Tables citing it |", "|---|---|---|"]
    for n, title in SPEC_SECTIONS.items():
        tables = ", ".join(f"[{t}](../mappings/{t})" for t in sorted(cited.get(n, []))) or "-"
        out.append(f"| <a id=\"{anchor(n)}\"></a>{n} | {title.replace('|', '/')} | {tables} |")
    return "\n".join(out) + "\n"


def build() -> str:
    """The full text of docs/criteria.md."""
    template = TEMPLATE.read_text(encoding="utf-8")
    cited: dict[str, list[str]] = defaultdict(list)
    used: set[str] = set()
    parts: list[str] = []
    for line in template.splitlines(keepends=True):
        m = re.match(r"<!-- tables: (.+) -->\s*$", line)
        if m:
            for name in m.group(1).split():
                path = MAPPINGS / name
                if not path.is_file():
                    raise BuildError(f"{TEMPLATE.name} names mappings/{name}, which does not exist")
                used.add(name)
                rendered, text = render_yaml(path) if path.suffix == ".yaml" else render_conceptmap(path)
                for n in sections_cited(text):
                    cited[n].append(name)
                parts.append(rendered + "\n")
        elif line.strip() == "<!-- spec-sections -->":
            parts.append("\0SECTIONS\0\n")
        else:
            parts.append(line)
    missing = sorted(p.name for p in MAPPINGS.iterdir() if p.suffix in (".yaml", ".json") and p.name not in used)
    if missing:
        raise BuildError(f"tables not documented in {TEMPLATE.name}: {', '.join(missing)} (add them to a "
                         "<!-- tables: ... --> line)")
    return "".join(parts).replace("\0SECTIONS\0\n", render_sections(cited))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/criteria.md is not current")
    args = parser.parse_args(argv)
    try:
        text = build()
    except (OSError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        if not current:
            print("docs/criteria.md is stale: run `python docs/build_criteria.py`", file=sys.stderr)
        return 0 if current else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
