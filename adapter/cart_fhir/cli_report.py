"""`cart-fhir report INPUT... -o report.html [--patient ID]` / `--out-dir DIR`: the toxicity timeline as
self-contained HTML (inline CSS, JavaScript and SVG: it opens from disk, with no network)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError
from .files import write_atomic
from .ingest.read import read_paths
from .pipeline import Engine, RunResult


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .cli_remote import add_server_args

    rep = sub.add_parser("report", help="the toxicity timeline of every patient as self-contained HTML",
                         description="Grade FHIR R4 input (files, folders, or --server with --patient) and draw "
                                     "each patient's toxicity timeline as one self-contained HTML file (-o), or "
                                     "one file per patient plus index.html (--out-dir).")
    rep.add_argument("inputs", nargs="*", metavar="INPUT", help="Bundle .json, .ndjson file, or a folder of them")
    rep.add_argument("-o", "--output", metavar="REPORT.html", help="write one HTML file with every patient")
    rep.add_argument("--out-dir", metavar="DIR", help="write one HTML file per patient and index.html here")
    rep.add_argument("--patient", action="append", default=[], metavar="ID",
                     help="only this patient (repeatable); with --server, the patients to read")
    rep.add_argument("--title", default=None, help="page title")
    rep.add_argument("--skip-invalid", action="store_true",
                     help="report invalid resources as warnings and draw the rest (default: fail on any)")
    rep.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    rep.add_argument("-v", "--verbose", action="store_true", help="debug logging (identifiers only, no PHI)")
    add_server_args(rep)


def run(args: argparse.Namespace) -> int:
    from .view.render import course_link, index_html, patient_file_name, patient_views, report_html  # report only

    if bool(args.output) == bool(args.out_dir):
        raise ConfigError("report needs one of -o REPORT.html or --out-dir DIR")
    engine = Engine(strict=not args.skip_invalid)
    result = _grade(args, engine)
    views = patient_views(engine, result, args.patient or None)
    missing = sorted(set(p.removeprefix("Patient/") for p in args.patient) - {v.patient_id for v in views})
    if missing:
        raise ConfigError(f"no such patient in the input: {', '.join(missing)}")
    title = args.title or "CAR-T toxicity timeline"
    if args.output:
        write_atomic(args.output, report_html(views, title=title).encode())
        where = args.output
    else:
        out = Path(args.out_dir)
        files = {patient_file_name(v): report_html([v], title=f"{title}: patient {v.patient_id}",
                                                   with_index=False) for v in views}
        links = {id(c): course_link(v, c) for v in views for c in v.courses}
        index = index_html(views, lambda c: links[id(c)], title=f"{title}s" if not args.title else title)
        for name, html in files.items():
            write_atomic(str(out / name), html.encode())
        write_atomic(str(out / "index.html"), index.encode())
        where = f"{out}/index.html and {len(files)} patient file(s)"
    if not args.quiet:
        courses = sum(len(v.courses) for v in views)
        sys.stderr.write(f"cart-fhir: wrote {where}: {len(views)} patient(s), {courses} infusion(s)\n")
    return 0


def _grade(args: argparse.Namespace, engine: Engine) -> RunResult:
    if args.inputs and args.base_url:
        raise ConfigError("give INPUT files, or --server with --patient, not both")
    if args.inputs:
        return engine.grade(read_paths(args.inputs))
    if not args.patient:
        raise ConfigError("nothing to draw: give INPUT files, or --server URL with --patient ID")
    from .cli_remote import grade_from_server

    # grade --server reads these too: one patient at a time, nothing written back.
    args.group, args.all_infused, args.write_back = None, False, False
    run = grade_from_server(args, engine)
    if run.input_errors:
        raise run.input_errors[0]
    return run.result
