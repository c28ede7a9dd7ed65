"""The `cart-fhir` command line: grade FHIR input files and write the output Bundle and a summary."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .cli_bulk import add_parser as add_bulk_parser
from .cli_bulk import run as bulk_run
from .cli_remote import ServerRun, add_server_args, grade_from_server, push_command
from .cli_report import add_parser as add_report_parser
from .cli_report import run as report_run
from .cli_synth import add_parser as add_synth_parser
from .cli_synth import run as synth_run
from .coverage import CoverageGate, Need
from .errors import AdapterError, BadInput, ConfigError, InputErrors
from .files import check_targets, write_all
from .grading.registry import GRADERS, load_all
from .pipeline import Engine, PatientResult
from .report import Issue, RunReport
from .summary import cohort_totals, episode_rows, render_table, table_rows

log = logging.getLogger("cart_fhir")
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
MAX_ERROR_LINES = 20
# A graded file run's objects (readings, results, output dicts), kept alive past main() so that entry()
# can end the process without freeing them one by one (measured: ~2x the parse time of the input, issue 18).
_KEEP_UNTIL_EXIT: list[object] = []


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cart-fhir", description=__doc__)
    p.add_argument("--version", action="version", version=f"cart-fhir {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade CAR-T toxicities (ASTCT CRS and ICANS) in FHIR R4 input",
                       description="Grade FHIR R4 Bundles and NDJSON files or folders; write the output Bundle.")
    g.add_argument("inputs", nargs="*", metavar="INPUT", help="Bundle .json, .ndjson file, or a folder of them")
    g.add_argument("-o", "--output", metavar="OUT.json", help="write the output Bundle here (default: stdout)")
    g.add_argument("--pretty", action="store_true",
                   help="indent the -o output Bundle (default: compact; stdout is always indented)")
    g.add_argument("--concept-map", action="append", default=[], metavar="MAP.json",
                   help="a FHIR ConceptMap from site-local codes to cart-fhir's concepts (repeatable)")
    g.add_argument("--bundle-type", choices=("collection", "transaction"), default="collection",
                   help="collection (default) or a transaction of conditional updates")
    g.add_argument("--summary-json", metavar="FILE", help="write the per-episode summary as JSON")
    g.add_argument("--skip-invalid", action="store_true",
                   help="report invalid resources as warnings and grade the rest (default: fail on any)")
    g.add_argument("--require", action="append", default=[], metavar="INPUT[,INPUT...]",
                   help="exit 2 (writing nothing) when a graded infusion has no usable reading of one of these "
                        "inputs in days 0-14: temperature, bp, oxygenation, ice, anc, platelets, crp, ... "
                        "(mappings/coverage.yaml names and aliases, or concept names)")
    g.add_argument("--show-values", action="store_true",
                   help="print the offending input value in error lines (they hold PHI: off by default)")
    g.add_argument("--validate", action="store_true",
                   help="validate every emitted resource with the fhir.resources R4B models before writing")
    g.add_argument("-q", "--quiet", action="store_true", help="no summary table or run report on stderr")
    g.add_argument("--table", choices=("none", "brief", "full"), default="full",
                   help="the summary table on stderr: every assessed toxicity per infusion (full, default), only "
                        "grades >= 1 and results the data cannot decide (brief), or none; both end with cohort "
                        "totals")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging (identifiers only, no PHI)")
    g.add_argument("--registry-csv", metavar="FILE", help="write the registry summary: one row per infusion")
    g.add_argument("--registry-follow-up-csv", metavar="FILE",
                   help="write the registry follow-up CSV: one row per infusion and follow-up period (day 100, "
                        "6 months, 1 year, then yearly) with its long-term effects")
    big = g.add_argument_group("large NDJSON inputs (streamed: memory stays flat as input grows)")
    big.add_argument("--out-dir", metavar="DIR",
                     help="write Bulk Data style <Type>.ndjson files and report.json here")
    big.add_argument("--workers", type=int, metavar="N", help="grading processes (0: all cores; default 1)")
    big.add_argument("--buckets", type=int, metavar="K",
                     help="patient partitions (default: ~64 MB of input each)")
    big.add_argument("--dask", metavar="SCHEDULER",
                     help="grade the partitions on Dask: synchronous, threads, processes, or tcp://host:port "
                          "(needs cart-fhir[dask]; the work folder must be on storage every worker reads)")
    who = g.add_argument_group("patients on a FHIR server (instead of INPUT files)")
    who.add_argument("--patient", action="append", default=[], metavar="ID", help="a patient id (repeatable)")
    who.add_argument("--group", metavar="ID", help="every active member of this Group")
    who.add_argument("--all-infused", action="store_true",
                     help="every patient with a coded CAR-T infusion (MedicationAdministration or Procedure)")
    who.add_argument("--write-back", action="store_true",
                     help="write the results to the server (conditional updates: running twice creates nothing)")
    add_server_args(g)
    push = sub.add_parser("push", help="write an output Bundle of `cart-fhir grade` to a FHIR server",
                          description="Write a cart-fhir output Bundle to a FHIR server, idempotently.")
    push.add_argument("bundle", metavar="OUT.json", help="a collection or transaction Bundle from cart-fhir grade")
    push.add_argument("-v", "--verbose", action="store_true", help="debug logging (identifiers only, no PHI)")
    add_server_args(push)
    val = sub.add_parser("validate", help="check a Bundle (or resource, or NDJSON) against cart-fhir's profiles",
                         description="Validate FHIR R4 resources: base R4 with its FHIRPath invariants (mad-1, "
                                     "cmd-1, ...), then each meta.profile of cart-fhir's published package "
                                     "(cardinality, fixed/pattern values, required bindings, reference targets, "
                                     "extensions, invariants). Exit 0 clean, 1 issues, 2 unreadable.")
    val.add_argument("file", metavar="FILE", help="a Bundle .json, a single resource, or .ndjson")
    val.add_argument("--package", metavar="DIR", help="a folder of conformance resources (default: the shipped one)")
    add_bulk_parser(sub)
    add_synth_parser(sub)
    add_report_parser(sub)
    srv = sub.add_parser("serve", help="run the FHIR service (gunicorn); settings from CART_FHIR_* variables",
                         description="Run cart-fhir's FHIR operations and CDS Hooks under gunicorn. Settings "
                                     "come from CART_FHIR_* environment variables (see the README).")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    srv.add_argument("--workers", type=int, help="worker processes (default: one per core, 2 to 8)")
    srv.add_argument("--timeout", type=int, default=120, help="seconds before a silent worker is restarted")
    srv.add_argument("--threads", type=int, default=32, help="threads per worker (default 32)")
    srv.add_argument("--header-timeout", type=float, default=10.0,
                     help="seconds a client has to send the request line and headers (default 10)")
    srv.add_argument("--body-timeout", type=float, default=30.0,
                     help="seconds a client has to send the whole request body (default 30)")
    srv.add_argument("--allow-no-auth", action="store_true",
                     help="listen on a non-loopback address with CART_FHIR_AUTH=off (something in front must "
                          "authenticate every caller); logged as a warning")
    srv.add_argument("--control-socket", metavar="PATH",
                     help="gunicorn's control socket for this instance (default: none)")
    return p


def _load_concept_maps(paths: list[str]) -> list[tuple[str, Any]]:
    maps = []
    for p in paths:
        try:
            maps.append((p, orjson.loads(Path(p).read_bytes())))
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read ConceptMap: {exc.strerror}") from exc
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{p}: ConceptMap is not valid JSON: {exc}") from exc
    return maps


def _check_sources(args: argparse.Namespace) -> None:
    remote = bool(args.patient or args.group or args.all_infused)
    chosen = sum((bool(args.patient), bool(args.group), bool(args.all_infused)))
    if args.inputs and (remote or args.base_url):
        raise ConfigError("give INPUT files, or --server with --patient/--group/--all-infused, not both")
    if chosen > 1:
        raise ConfigError("give one of --patient, --group, --all-infused")
    if not args.inputs and not remote:
        raise ConfigError("nothing to grade: give INPUT files, or --server URL with --patient ID, --group ID "
                          "or --all-infused")
    if args.write_back and not remote:
        raise ConfigError("--write-back needs patients from a server (--patient, --group or --all-infused)")


def grade_command(args: argparse.Namespace) -> int:
    _check_sources(args)
    check_targets([args.output, args.summary_json, args.registry_csv])
    if args.out_dir or args.workers is not None or args.buckets is not None or args.dask:
        return _stream_command(args)
    engine = Engine(concept_maps=_load_concept_maps(args.concept_map), strict=not args.skip_invalid)
    required = engine.coverage.resolve(_require_names(args.require))
    recorded = datetime.now(UTC).replace(microsecond=0)
    run = None
    if args.inputs:
        result = engine.grade(engine.read(args.inputs))
        written = engine.resources(result, recorded)
    else:
        run = grade_from_server(args, engine)
        result = run.result
        written = [run.device, *(w for g in run.groups for w in g.resources)] if run.groups and run.device else []
    if _coverage_failed(result.report, engine.coverage, required, result.patients):
        return EXIT_BAD_INPUT  # before anything is written: a pipeline must not take this run for a pass
    if args.validate:
        from .validate import validate_resources

        validate_resources([w.resource for w in written])
    bundle = engine.bundle(written, args.bundle_type)
    # A file is for programs: compact unless --pretty (indentation nearly doubles it: 65 vs 35 MB for 200
    # synthetic patients, issue 18); stdout is for people and stays indented.
    indent = orjson.OPT_INDENT_2 if args.pretty or not args.output else 0
    payload = orjson.dumps(bundle, option=indent | orjson.OPT_APPEND_NEWLINE)
    summary = orjson.dumps(episode_rows(result), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE) \
        if args.summary_json else None
    registry = _registry_csv(result) if args.registry_csv else None
    follow_up = _follow_up_csv(result) if args.registry_follow_up_csv else None
    # `--patient nope`: nothing graded and exit 2 ahead, so no empty Bundle, file or stdout.
    nothing = run is not None and bool(run.input_errors) and not written
    # Everything is built before anything is written: a failure above leaves no file behind.
    if not nothing:
        write_all([(path, data) for path, data in ((args.registry_csv, registry),
                                                     (args.registry_follow_up_csv, follow_up),
                                                     (args.summary_json, summary), (args.output, payload))
                   if path and data is not None])
    if not (args.output or nothing or args.write_back or getattr(args, "verify", False)):  # results on the server
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
    if not args.quiet:
        if args.table != "none":
            print(render_table(table_rows(result, args.table), cohort_totals(result)), file=sys.stderr)
        for line in result.report.summary_lines():
            print(line, file=sys.stderr)
        _print_issues(result.report.issues, len(result.report.issues), args.show_values)
        _print_coverage_warnings(result.report)
        if not result.report.patients_graded and not nothing:
            print("warning: nothing graded: no patient in the input has a CAR-T infusion (a MedicationAdministration "
                  "of a CAR-T product, or a Procedure CPT 38228); the output Bundle is empty", file=sys.stderr)
    if run is not None:
        return _server_outcome(run, args.quiet)
    _KEEP_UNTIL_EXIT.append((result, written, bundle))
    return EXIT_OK


def _print_coverage_warnings(report: RunReport) -> None:
    """An input most graded infusions lack: likely unmapped site codes (issue 13 item 1). Not with -q:
    pipelines that must not pass silently use --require."""
    for line in report.coverage_warnings():
        print(f"warning: {line}", file=sys.stderr)


def _require_names(values: list[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name.strip()]


def _coverage_failed(report: RunReport, gate: CoverageGate, required: tuple[Need, ...],
                     patients: list[PatientResult] | None) -> bool:
    """With --require: one error per graded infusion without a required input, and a total (exit 2)."""
    failed = [(need, report.infusions_missing(need.name, gate.is_group(need))) for need in required]
    failed = [(need, n) for need, n in failed if n]
    if not failed:
        return False
    lines = []
    for pr in patients or []:
        for cr in pr.courses:
            unmet = gate.unmet(cr.course, required)
            if unmet:
                lines.append(f"{pr.patient.key} infusion {cr.course.number}: no usable reading of "
                             f"{', '.join(n.name for n in unmet)} in {gate.window} (--require)")
    for line in lines[:MAX_ERROR_LINES]:
        print(f"cart-fhir: error: {line}", file=sys.stderr)
    if len(lines) > MAX_ERROR_LINES:
        print(f"cart-fhir: ... and {len(lines) - MAX_ERROR_LINES} more infusions", file=sys.stderr)
    summary = ", ".join(f"{need.name} missing for {n} of {report.infusions_graded}" for need, n in failed)
    print(f"cart-fhir: error: required inputs missing in graded infusions: {summary}; map site codes with "
          "--concept-map, or drop --require to grade anyway", file=sys.stderr)
    return True


def _registry_csv(result: Any) -> bytes:
    """Header and one row per infusion course (adapter.registry, imported only when asked for)."""
    from .registry import csv_text, registry_rows

    return csv_text((row for pr in result.patients for row in registry_rows(pr, result.tables, result.reviews)),
                    result.tables).encode()


def _follow_up_csv(result: Any) -> bytes:
    """Header and one row per infusion and follow-up period (adapter.follow_up, imported only when asked for)."""
    from .follow_up import csv_text, follow_up_rows

    return csv_text((row for pr in result.patients for row in follow_up_rows(pr, result.tables)),
                    result.tables).encode()


def _stream_command(args: argparse.Namespace) -> int:
    """The streamed path (adapter/cart_fhir/stream): partition by patient, grade buckets in worker processes."""
    from .stream.run import StreamJob, run_stream
    from .stream.tally import Tally

    if not args.inputs:
        raise ConfigError("--out-dir, --workers and --buckets grade INPUT files, not patients on a server")
    if args.validate:
        raise ConfigError("--validate is not available with --out-dir/--workers: validate the output files")
    if args.registry_follow_up_csv:
        raise ConfigError("--registry-follow-up-csv is not available with --out-dir/--workers yet: grade without them")
    if not (args.out_dir or args.output or args.summary_json or args.registry_csv):
        raise ConfigError("a streamed run writes files: give --out-dir DIR or -o OUT.json")
    gate = CoverageGate(load_all(), GRADERS)
    required = gate.resolve(_require_names(args.require))

    def check(tally: Tally) -> None:  # before anything is assembled: an unmet --require leaves no file
        if _coverage_failed(tally.report, gate, required, None):
            raise _Unmet()

    job = StreamJob(inputs=args.inputs, out_dir=Path(args.out_dir) if args.out_dir else None,
                    bundle_out=Path(args.output) if args.output else None, bundle_type=args.bundle_type,
                    summary_json=Path(args.summary_json) if args.summary_json else None,
                    registry_csv=Path(args.registry_csv) if args.registry_csv else None,
                    workers=1 if args.workers is None else args.workers, buckets=args.buckets,
                    strict=not args.skip_invalid, concept_maps=_load_concept_maps(args.concept_map),
                    progress=not args.quiet, dask=args.dask, check=check)
    try:
        t = run_stream(job)  # bad input raises InputErrors: main() prints it like the in-memory path
    except _Unmet:
        return EXIT_BAD_INPUT
    if not args.quiet:
        for line in t.report.summary_lines():
            print(line, file=sys.stderr)
        _print_issues(t.errors[:MAX_ERROR_LINES], t.errors_total, args.show_values)
        _print_issues(t.warnings[:MAX_ERROR_LINES], t.warnings_total, args.show_values)
        seconds = t.timings["total"]
        print(f"issues: {t.errors_total} invalid (skipped), {t.warnings_total} warnings; {seconds:.1f} s, "
              f"{t.report.patients / seconds if seconds else 0:.1f} patients/s", file=sys.stderr)
        _print_coverage_warnings(t.report)
    return EXIT_OK


class _Unmet(AdapterError):
    """--require failed on a streamed run (the lines naming what is missing are already printed)."""


def _print_issues(issues: list[Issue], total: int, show_values: bool) -> None:
    """Warnings, and the bad input --skip-invalid skipped (a warning too: the run went on without it);
    at most MAX_ERROR_LINES lines, then how many more there were."""
    for issue in issues[:MAX_ERROR_LINES]:
        what = "warning: skipped" if issue.severity == "error" else issue.severity
        print(f"{what}: {issue.describe(show_values)}", file=sys.stderr)
    if total > MAX_ERROR_LINES:
        print(f"... and {total - MAX_ERROR_LINES} more", file=sys.stderr)


def _server_outcome(run: ServerRun, quiet: bool) -> int:
    """Patients with bad data (exit 2) and failed writes (exit 1) are reported after the others went on."""
    for err in run.input_errors[:MAX_ERROR_LINES]:
        print(f"cart-fhir: error: {err}", file=sys.stderr)
    lines, failed = run.lines(quiet)
    for line in lines:
        print(line if line.startswith("error") else f"cart-fhir: {line}", file=sys.stderr)
    if failed:
        return EXIT_FAILURE
    return EXIT_BAD_INPUT if run.input_errors else EXIT_OK


def push_cmd(args: argparse.Namespace) -> int:
    report = push_command(args)
    for line in report.lines():
        print(line if line.startswith("error") else f"cart-fhir: {line}", file=sys.stderr)
    return EXIT_FAILURE if report.failed else EXIT_OK


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every `finally` runs (a streamed run removes its
    hidden staging folder; no temporary output file stays behind)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "grade" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # urllib3 logs every request line with its query (search values) at DEBUG: keep it out of our logs.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        if args.command == "grade":
            return grade_command(args)
        if args.command == "push":
            return push_cmd(args)
        if args.command == "bulk-export":
            return bulk_run(args)
        if args.command == "synth":
            return synth_run(args)
        if args.command == "report":
            return report_run(args)
        if args.command == "validate":
            from .cli_validate import validate_command

            return validate_command(args.file, args.package)
        if args.command == "serve":
            from .service.serve import serve

            serve(args.host, args.port, args.workers, args.timeout, threads=args.threads,
                  allow_no_auth=args.allow_no_auth, control_socket=args.control_socket,
                  header_timeout=args.header_timeout, body_timeout=args.body_timeout)
            return EXIT_OK
    except InputErrors as exc:
        show = bool(getattr(args, "show_values", False))
        for err in exc.errors[:MAX_ERROR_LINES]:
            print(f"cart-fhir: error: {err.describe(show)}", file=sys.stderr)
        if exc.total > MAX_ERROR_LINES:
            print(f"cart-fhir: ... and {exc.total - MAX_ERROR_LINES} more errors", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadInput as exc:
        print(f"cart-fhir: error: {exc.describe(bool(getattr(args, 'show_values', False)))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigError as exc:
        print(f"cart-fhir: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AdapterError as exc:
        print(f"cart-fhir: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("cart-fhir: error: interrupted: nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("cart-fhir: error: terminated (SIGTERM): nothing written", file=sys.stderr)
        return 143
    return EXIT_FAILURE


def entry() -> None:
    """The console script. After a graded file run, whose outputs are all written and closed, flush and end
    the process with os._exit: the OS reclaims the memory at once instead of CPython deallocating every
    object (1.9x the parse time, issue 18). Every other command exits normally (atexit, worker clean-up)."""
    code = main()
    if not _KEEP_UNTIL_EXIT:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
