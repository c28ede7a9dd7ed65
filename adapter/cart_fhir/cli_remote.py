"""The command line's FHIR-server half: `grade --server` (read, grade, optionally write back) and `push`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import orjson

from .constants import BASE, ID_DEVICE, ID_RUN
from .errors import BadInput, InputErrors, Location
from .ingest.index import ref_key
from .output.resources import PatientResources, Written
from .pipeline import Engine, RunResult
from .remote.defaults import CHUNK_SIZE, MAX_RESOURCES, PAGE_SIZE, RETRIES, TIMEOUT, AuthKind, WriteMode
from .remote.errors import AuthFailed, ServerError
from .report import RunReport

if TYPE_CHECKING:  # the client stack (requests, fhirpy, jwt) is imported only by the commands that talk to a server
    from .remote.read import PatientReader
    from .remote.write import PatientWrite, ResultWriter, WriteReport

log = logging.getLogger("cart_fhir")


def add_server_args(p: argparse.ArgumentParser) -> None:
    """Server settings; each also comes from CART_FHIR_* in the environment or a TOML --config file."""
    s = p.add_argument_group("FHIR server (flags override CART_FHIR_* environment, which overrides --config)")
    s.add_argument("--server", dest="base_url", metavar="URL", help="FHIR base URL (CART_FHIR_SERVER)")
    s.add_argument("--config", metavar="FILE.toml", help="server settings in a TOML file ([server] table)")
    s.add_argument("--auth", choices=get_args(AuthKind),
                   help="default: smart with a client id, bearer with a token, else none")
    s.add_argument("--token-file", metavar="FILE", help="a file holding a bearer token (or CART_FHIR_TOKEN)")
    s.add_argument("--client-id", metavar="ID", help="SMART Backend Services client id")
    s.add_argument("--private-key", metavar="FILE", help="SMART signing key: PEM (RSA or EC P-384) or JWKS")
    s.add_argument("--kid", help="key id (default: the JWK's kid, or the key's RFC 7638 thumbprint)")
    s.add_argument("--scope", help="SMART scopes to request")
    s.add_argument("--token-url", metavar="URL", help="token endpoint (default: from .well-known/smart-configuration)")
    s.add_argument("--page-size", type=int, metavar="N",
                   help=f"_count for searches and $everything (default {PAGE_SIZE})")
    s.add_argument("--chunk-size", type=int, metavar="N",
                   help=f"entries per transaction (default {CHUNK_SIZE})")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help=f"read timeout per request (default {TIMEOUT:g})")
    s.add_argument("--retries", type=int, metavar="N",
                   help=f"attempts for 429/502/503/504 and dropped connections (default {RETRIES})")
    s.add_argument("--max-resources", type=int, metavar="N",
                   help=f"stop reading one search after N resources (default {MAX_RESOURCES})")
    s.add_argument("--write-mode", choices=get_args(WriteMode),
                   help="auto (default): transactions unless the server refuses them")
    s.add_argument("--no-everything", dest="everything", action="store_const", const=False,
                   help="read by searches even where the server offers Patient/$everything")
    s.add_argument("--verify", action="store_true",
                   help="with --write-back's patients: write nothing, list patients whose results on the server "
                        "are incomplete (no Provenance of this run) or stale (exit 1 if any); re-run to repair")
    s.add_argument("--observation-category", dest="observation_categories", metavar="CODES",
                   help="read only Observations of these categories (comma-separated, e.g. "
                        "vital-signs,laboratory,survey; default: all, so uncategorised data is not missed)")


def server_flags(args: argparse.Namespace) -> dict[str, Any]:
    names = ("base_url", "auth", "token_file", "client_id", "private_key", "kid", "scope", "token_url", "page_size",
             "chunk_size", "timeout", "retries", "max_resources", "write_mode", "everything",
             "observation_categories")
    return {n: getattr(args, n, None) for n in names}


@dataclass(slots=True)
class ServerRun:
    result: RunResult
    device: Written | None = None
    groups: list[PatientResources] = field(default_factory=list)
    write: WriteReport | None = None
    input_errors: list[BadInput] = field(default_factory=list)
    read_failures: list[str] = field(default_factory=list)  # "Patient/x: <why>": not graded, the cohort went on
    verify: list[PatientWrite] | None = None  # --verify: what a write would do, per patient

    def lines(self, quiet: bool) -> tuple[list[str], bool]:
        """The write-back / verify report lines for stderr, and whether the run failed (exit 1)."""
        out = [f"error: {f}" for f in self.read_failures]
        failed = bool(self.read_failures)
        if self.write is not None:
            out += [ln for ln in self.write.lines() if not quiet or ln.startswith("error")]
            failed = failed or bool(self.write.failed)
        if self.verify is not None:
            bad = [p for p in self.verify if not p.ok or not p.complete or p.stale]
            for p in bad:
                why = p.error or ("incomplete: no Provenance of this run" if not p.complete else "stale")
                out.append(f"verify: {p.patient_key}: {why} ({p.counts()})")
            out.append(f"verify: {len(self.verify) - len(bad)} of {len(self.verify)} patients complete and current"
                       + (": re-run with --write-back to repair " + ", ".join(p.patient_key for p in bad) if bad
                          else ""))
            failed = failed or bool(bad)
        if self.read_failures:
            out.append("error: patients not graded (the server failed after the retries), re-run: "
                       + ", ".join(f.split(":")[0] for f in self.read_failures))
        return out, failed


def grade_from_server(args: argparse.Namespace, engine: Engine) -> ServerRun:
    """One patient at a time: read, grade, write back (under that patient's lock), so memory stays per patient
    and a patient with bad data or a failed write does not stop the others."""
    from .remote.connect import connect
    from .remote.read import PatientReader
    from .remote.settings import load_settings
    from .remote.write import ResultWriter, WriteReport

    settings = load_settings(server_flags(args), args.config)
    client = connect(settings)
    try:
        reader = PatientReader(client, engine.terminology, observation_categories=settings.observation_categories,
                               use_everything=settings.everything)
        if args.patient:
            ids = list(dict.fromkeys(p.removeprefix("Patient/") for p in args.patient))
        elif args.group:
            ids = reader.group_members(args.group)
        else:
            ids = reader.infused_patients()
        log.info("%d patients to grade from %s", len(ids), client.base_url)
        recorded = datetime.now(UTC).replace(microsecond=0)
        run_id = recorded.strftime("%Y-%m-%dT%H:%M:%SZ")
        verify = bool(getattr(args, "verify", False))
        writer = ResultWriter(client, chunk_size=settings.chunk_size, mode=settings.write_mode, run=run_id) \
            if args.write_back or verify else None
        run = ServerRun(RunResult([], RunReport(), engine.tables))
        if verify:
            run.verify = []
        elif writer is not None:
            run.write = WriteReport(client.base_url)
        start = client.http.round_trips
        for pid in ids:
            _grade_one(pid, reader, engine, writer, recorded, run)
        produced = sum(len(g.resources) for g in run.groups)
        run.result.report.resources_written = produced + 1 if produced else 0  # the engine Device once per run
        if run.write is not None and writer is not None:
            run.write.mode = writer.mode if writer.mode != "auto" else (
                "transaction" if client.capabilities().transaction else "batch")
            run.write.round_trips = sum(p.round_trips for p in run.write.patients)
        log.info("read %d patients in %d round trips (%s)", reader.stats.patients, reader.stats.round_trips,
                 ", ".join(f"{k}: {v}" for k, v in reader.stats.per_patient.items()))
        log.debug("server round trips in all: %d", client.http.round_trips - start)
        return run
    finally:
        client.close()


def _grade_one(pid: str, reader: PatientReader, engine: Engine, writer: ResultWriter | None,
               recorded: datetime, run: ServerRun) -> None:
    try:
        items = reader.patient(pid)
    except ServerError as exc:
        if isinstance(exc, AuthFailed) or exc.status in (401, 403) or not (
                exc.status is None or exc.status >= 500 or exc.status == 429):
            raise
        run.read_failures.append(f"Patient/{pid}: {exc.message}")  # the server failed after the retries
        return
    try:
        result = engine.grade(items)
    except InputErrors as exc:
        run.input_errors.extend(exc.errors)
        run.result.report.patients += 1
        return
    except BadInput as exc:
        run.input_errors.append(exc)
        run.result.report.patients += 1
        return
    device, groups = engine.resources_by_patient(result, recorded)  # counts the grades and resources produced
    run.result.report.merge(result.report)
    run.result.patients.extend(result.patients)
    run.result.reviews.update(result.reviews)  # a clinician's reviews of our results read back from the server
    run.device = device
    run.groups.extend(groups)
    if writer is not None and run.verify is not None:
        run.verify.extend(writer.write_patient(device, group, dry_run=True) for group in groups)
    elif writer is not None and run.write is not None:
        for group in groups:
            run.write.patients.append(writer.write_patient(device, group))


# ---- push ----------------------------------------------------------------------------------------

def push_command(args: argparse.Namespace) -> WriteReport:
    """Write a Bundle that `cart-fhir grade` produced (collection or transaction) to a server."""
    from .remote.connect import connect
    from .remote.settings import load_settings
    from .remote.write import ResultWriter

    device, groups = written_from_bundle(args.bundle)
    settings = load_settings(server_flags(args), args.config)
    client = connect(settings)
    try:
        writer = ResultWriter(client, chunk_size=settings.chunk_size, mode=settings.write_mode,
                              run=datetime.now(UTC).strftime("push %Y-%m-%dT%H:%M:%SZ"))
        if device is None:
            raise BadInput("the Bundle has no cart-fhir engine Device: not a cart-fhir output Bundle",
                           Location(args.bundle))
        return writer.write(device, groups)
    finally:
        client.close()


def written_from_bundle(path: str) -> tuple[Written | None, list[PatientResources]]:
    """Rebuild the writer's view of an output Bundle: each resource with its fullUrl and conditional URL,
    grouped by patient in Bundle order (Provenance goes with the patient of its targets)."""
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise BadInput(f"cannot read: {exc.strerror}", Location(path)) from exc
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"not valid JSON: {exc}", Location(path)) from exc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle" or \
            doc.get("type") not in ("collection", "transaction"):
        raise BadInput("expected a collection or transaction Bundle written by cart-fhir grade", Location(path))
    device: Written | None = None
    groups: dict[str, list[Written]] = {}
    patient_of: dict[str, str] = {}
    for i, entry in enumerate(doc.get("entry") or []):
        loc = Location(path, entry=i)
        res = entry.get("resource") if isinstance(entry, dict) else None
        url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(url, str):
            raise BadInput("entry has no resource or no fullUrl", loc)
        w = Written(url, res, _condition(res, entry, loc))
        rtype = res.get("resourceType")
        if rtype == "Device":
            device = w
            continue
        if rtype == "Provenance":
            targets = [t.get("reference") for t in res.get("target") or [] if isinstance(t, dict)]
            patient = next((patient_of[t] for t in targets if t in patient_of), None)
        else:
            ref = (res.get("subject") or {}).get("reference")
            patient = ref_key(ref) if isinstance(ref, str) else None
        if patient is None:
            raise BadInput(f"{rtype} has no subject (or Provenance target) to group it by patient", loc)
        patient_of[url] = patient
        groups.setdefault(patient, []).append(w)
    return device, [PatientResources(k, v) for k, v in groups.items()]


def _condition(res: dict[str, Any], entry: dict[str, Any], loc: Location) -> str:
    """The conditional update URL: the transaction's own, else built from the business identifier."""
    request = entry.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str) and "?" in request["url"]:
        return request["url"]
    rtype = res.get("resourceType")
    if rtype == "Provenance":
        tags = [t for t in (res.get("meta") or {}).get("tag") or [] if t.get("system") == ID_RUN]
        if tags:
            return f"Provenance?_tag={ID_RUN}|{tags[0]['code']}"
    ids = res.get("identifier")
    ids = ids if isinstance(ids, list) else [ids] if isinstance(ids, dict) else []
    ours = [i for i in ids if isinstance(i, dict) and str(i.get("system", "")).startswith(f"{BASE}/identifier/")]
    if not ours:
        raise BadInput(f"{rtype} carries no cart-fhir business identifier: cannot be written idempotently", loc)
    if rtype == "Device" and ours[0].get("system") != ID_DEVICE:
        raise BadInput("Device identifier is not cart-fhir's", loc)
    return f"{rtype}?identifier={ours[0]['system']}|{ours[0]['value']}"
