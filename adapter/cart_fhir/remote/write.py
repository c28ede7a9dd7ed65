"""Write graded resources to a FHIR server: per patient, idempotently, leaving clinicians' edits alone.

Every resource carries a deterministic business identifier (output-contract.md) and, when written, its
content hash as a meta.tag (remote/changes.py). Per patient, under that patient's lock: one batch of
searches reads what of ours the server holds, a plan decides per resource (create by conditional update or
stable id, update by id with If-Match, leave unchanged, retract what is no longer produced, keep what a
clinician changed), and the plan goes in one transaction when it fits the chunk size, else in several,
each all-or-nothing, in reference order (a chunk's references to earlier chunks are rewritten to the ids
the server gave); the Provenance comes last, so a patient with a Provenance is completely written. A
transaction refused as too big halves the chunk size for the rest of the run; servers that refuse
transactions get batches, one per reference level. A 412 on If-Match (another writer was first) re-reads
and re-plans; an identifier matching several resources stops that patient and names the duplicates.
"""

from __future__ import annotations

import logging
from typing import Any

from ..ingest.index import ref_key
from ..output.requests import BY_ID_TYPES, stable_id
from ..output.resources import PatientResources, Written
from .changes import content_hash, hash_tags, version_of, with_hash
from .client import FhirClient
from .errors import DeadlineExceeded, ServerError, outcome_text, status_code
from .locks import PatientLocks
from .outcome import Conflict, PatientWrite, WriteFailed, WriteReport
from .plan import Op, levels, op_levels, plan, read_existing
from .settings import CHUNK_SIZE, WriteMode

__all__ = ["Conflict", "PatientWrite", "ResultWriter", "WriteFailed", "WriteReport", "levels"]

log = logging.getLogger(__name__)

Mode = WriteMode
# Issue codes (and statuses) that mean "this Bundle is too big for me": halve the chunk and try again.
TOO_BIG_CODES = frozenset({"too-costly", "too-long"})
# Limit texts answered with a plain 400 `invalid`: Medplum 5.x batch.ts (any conditional entry and more than 8
# entries; more than 50 updates), HAPI BaseTransactionProcessor (HAPI-0528, normally a 413).
TOO_BIG_TEXTS = ("requires strict isolation but has too many entries", "more update operations than allowed",
                 "transaction bundle too large")
CONFLICT_RETRIES = 3  # re-read and re-plan this often when another writer's version is newer (If-Match)


class ResultWriter:
    """Writes the engine Device once, then each patient's resources under that patient's lock."""

    def __init__(self, client: FhirClient, *, chunk_size: int = CHUNK_SIZE, mode: Mode = "auto",
                 locks: PatientLocks | None = None, run: str | None = None) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.client = client
        self.chunk_size = chunk_size  # shrinks for the rest of the run when the server says "too big"
        self.mode = mode
        self.locks = locks or PatientLocks(client.base_url)
        self.run = run or "(unnamed)"
        self._resolved: dict[str, str] = {}  # urn:uuid fullUrl -> "Type/id" on the server

    def write(self, device: Written, groups: list[PatientResources]) -> WriteReport:
        """The Device (once per writer), then every patient; a failed patient does not stop the others."""
        start = self.client.http.round_trips
        report = WriteReport(self.client.base_url, self._mode())
        for group in groups:
            report.patients.append(self.write_patient(device, group))
        report.mode = self._mode()
        report.round_trips = self.client.http.round_trips - start
        return report

    def write_patient(self, device: Written, group: PatientResources, *, dry_run: bool = False) -> PatientWrite:
        """One patient's resources, under that patient's lock; the engine Device first if not yet written.
        dry_run: read and plan only (the counts say what a write would do: --verify)."""
        pw = PatientWrite(group.patient_key, resources=len(group.resources))
        start = self.client.http.round_trips
        try:
            if device.full_url not in self._resolved:
                self._write_device(device, dry_run)
            with self.locks.hold(group.patient_key):
                for attempt in range(CONFLICT_RETRIES):
                    try:
                        self._write_once(group, pw, dry_run)
                        break
                    except Conflict as exc:
                        pw.conflicts += 1
                        log.info("%s: another writer changed a result meanwhile (%s): re-reading", group.patient_key,
                                 exc.status)
                        if attempt == CONFLICT_RETRIES - 1:
                            raise WriteFailed("POST", exc.url, exc.status, outcome=exc.outcome,
                                              detail="other writers kept changing this patient's results") from exc
        except WriteFailed as exc:
            pw.error = exc.message
        except DeadlineExceeded:
            raise  # the request's time budget is spent: no other patient would fare better; the caller says so
        except ServerError as exc:
            if exc.status in (401, 403):
                raise  # the server refuses us: no other patient would fare better
            pw.error = exc.message  # failed after the retries: reported, the cohort goes on
        pw.round_trips = self.client.http.round_trips - start
        log.debug("wrote %s: %s, %d round trips%s", group.patient_key, pw.counts(), pw.round_trips,
                  "" if pw.ok else " (failed)")
        return pw

    def _existing(self, group: PatientResources, pw: PatientWrite) -> dict[str, dict[str, Any]]:
        """What of ours the server holds for this patient (a seam: tests race another writer here)."""
        return read_existing(self.client, group, pw)

    def _write_once(self, group: PatientResources, pw: PatientWrite, dry_run: bool) -> None:
        pw.created = pw.updated = pw.unchanged = pw.retracted = 0  # a re-plan after a conflict starts over
        pw.kept = []
        ops = plan(group, self._existing(group, pw), pw, resolved=self._resolved, url_of=self._url,
                   run=self.run)
        if dry_run:
            pw.created = sum(1 for o in ops if not o.existed)
            pw.updated = sum(1 for o in ops if o.existed and not o.retract)
            pw.retracted = sum(1 for o in ops if o.retract)
            return
        if not ops:
            return
        if self._mode() == "batch":
            self._write_batches(ops, pw)
        else:
            self._write_transactions(ops, pw)
        pw.complete = True

    # ---- what is on the server, and what to do --------------------------------------------------

    # ---- transactions ----------------------------------------------------------------------------

    def _mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "transaction" if self.client.capabilities().transaction else "batch"

    def _write_device(self, device: Written, dry_run: bool) -> None:
        """The engine Device: read first, written only when missing or changed (a new version or table)."""
        pw = PatientWrite("Device")
        digest = content_hash(device.resource)
        hits = list(self.client.search("Device", identifier=device.condition.partition("=")[2]))
        if hits:
            stored = hits[0]
            self._resolved[device.full_url] = f"Device/{stored['id']}"
            if digest in hash_tags(stored) or dry_run:
                return
            version = version_of(stored)
            op = Op(device.full_url, with_hash(device.resource, digest), f"Device/{stored['id']}",
                    if_match=f'W/"{version}"' if version else None, existed=True, label=device.condition)
        elif dry_run:
            raise WriteFailed("GET", self.client.base_url, None, detail="the engine Device is not on the server")
        else:
            op = Op(device.full_url, with_hash(device.resource, digest), self._url(device), label=device.condition)
        try:
            if self._mode() == "batch":
                self._write_batches([op], pw)
            else:
                self._write_transactions([op], pw)
        except Conflict:  # another writer updated the Device meanwhile: theirs is as good as ours
            return

    def _write_transactions(self, ops: list[Op], pw: PatientWrite) -> None:
        pending = list(ops)
        while pending:
            size = self.chunk_size
            chunk = pending[:size]
            try:
                self._post_chunk(chunk, pw, "transaction")
            except ServerError as exc:
                if _too_big(exc) and size > 1:
                    self.chunk_size = max(1, min(size, len(chunk)) // 2)
                    log.info("the server refused a %d-entry transaction as too big (%s): chunks of %d for the "
                             "rest of the run", len(chunk), outcome_text(exc.outcome) or exc.status, self.chunk_size)
                    continue
                if _refuses_transactions(exc) and self.mode == "auto":
                    log.warning("the server refuses transactions (HTTP %s): writing batches instead", exc.status)
                    self.mode = "batch"
                    self._write_batches(pending, pw)
                    return
                raise
            pending = pending[len(chunk):]

    def _post_chunk(self, chunk: list[Op], pw: PatientWrite, kind: str) -> None:
        local = {o.full_url for o in chunk if o.method == "PUT"} if kind == "transaction" else set()
        entries = [self._entry(o, local) for o in chunk]
        pw.requests += 1
        try:
            answer = self.client.bundle({"resourceType": "Bundle", "type": kind, "entry": entries})
        except ServerError as exc:
            if _version_conflict(exc.status, exc.outcome, chunk):
                raise Conflict("POST", exc.url, exc.status, outcome=exc.outcome) from exc
            if _multiple_matches(exc.status, exc.outcome):
                pw.duplicates = self._duplicates([o for o in chunk if "?" in o.url])
                raise WriteFailed("POST", exc.url, exc.status, outcome=exc.outcome,
                                  detail="a business identifier matches several resources on the server; "
                                         "nothing of this transaction was written") from exc
            raise
        replies = answer.get("entry") or []
        if len(replies) != len(chunk):
            raise WriteFailed("POST", self.client.base_url, 200,
                              detail=f"a {kind} of {len(chunk)} entries answered with {len(replies)} entries")
        failures = []
        for o, reply in zip(chunk, replies, strict=True):
            resp = reply.get("response") or {}
            status = str(resp.get("status", "")).split(" ")[0]
            if not status.startswith("2"):
                failures.append((o, status, resp.get("outcome")))
                continue
            if o.method == "DELETE":
                self._resolved.pop(o.full_url, None)
                pw.retracted += 1
                continue
            location = resp.get("location") or _location_of(reply.get("resource"))
            if not isinstance(location, str):
                raise WriteFailed("POST", self.client.base_url, 200,
                                  detail=f"{o.label}: the server answered {status} without a location")
            self._resolved[o.full_url] = ref_key(location)
            if o.retract:
                pw.retracted += 1
            elif _created(status, o.existed, _version(resp, location)):
                pw.created += 1
            else:
                pw.updated += 1
        if failures:
            if any(_version_conflict(status_code(s), oc, [o]) for o, s, oc in failures):
                raise Conflict("POST", self.client.base_url, 412, outcome=failures[0][2])
            if any(_multiple_matches(status_code(s), oc) for _, s, oc in failures):
                pw.duplicates = self._duplicates([o for o, s, _ in failures if s == "412"] or chunk)
            first = failures[0]
            raise WriteFailed("POST", self.client.base_url, status_code(first[1]), outcome=first[2],
                              detail=f"{len(failures)} of {len(chunk)} {kind} entries refused, first "
                                     f"{first[0].label}: HTTP {first[1]}")

    def _write_batches(self, ops: list[Op], pw: PatientWrite) -> None:
        """No transactions: one batch per reference level, so every reference points at a written resource."""
        for level in op_levels(ops):
            for i in range(0, len(level), self.chunk_size):
                self._post_chunk(level[i:i + self.chunk_size], pw, "batch")

    def _entry(self, o: Op, local: set[str]) -> dict[str, Any]:
        request: dict[str, Any] = {"method": o.method, "url": o.url}
        if o.if_match:
            request["ifMatch"] = o.if_match
        if o.body is None:
            return {"request": request}
        resource = _rewrite(o.body, self._resolved, local)
        if "?" not in o.url:  # an update by id: the body's id must match the URL's (FHIR R4 update)
            resource["id"] = o.url.split("/", 1)[1]
        if isinstance(resource.get("meta"), dict):
            resource["meta"] = {k: v for k, v in resource["meta"].items() if k not in ("versionId", "lastUpdated")}
        return {"fullUrl": o.full_url, "resource": resource, "request": request}

    def _url(self, w: Written) -> str:
        """The conditional update URL; a type R4 cannot search by identifier (output/requests.py), or a server
        that cannot search that key, gets a PUT by a stable id."""
        rtype, _, query = w.condition.partition("?")
        param = query.partition("=")[0]
        if rtype not in BY_ID_TYPES and self.client.capabilities().searchable(rtype, param):
            return w.condition
        return f"{rtype}/{stable_id(w)}"

    def _duplicates(self, chunk: list[Op]) -> list[str]:
        """Which identifiers of the chunk match more than one resource (one search per resource type)."""
        by_type: dict[tuple[str, str], list[str]] = {}
        for o in chunk:
            if "?" not in o.label:
                continue
            rtype, _, query = o.label.partition("?")
            param, _, key = query.partition("=")
            by_type.setdefault((rtype, param), []).append(key)
        out = []
        for (rtype, param), keys in by_type.items():
            seen: dict[str, list[str]] = {}
            try:
                params: dict[str, Any] = {param: ",".join(keys), "_elements": "identifier,meta"}
                for res in self.client.search(rtype, **params):
                    for key in _keys_of(res, param):
                        if key in keys:
                            seen.setdefault(key, []).append(f"{rtype}/{res.get('id')}")
            except ServerError as exc:
                out.append(f"{rtype}: could not search for duplicates ({exc.message})")
                continue
            out.extend(f"{rtype} {param} {k}: {', '.join(ids)}" for k, ids in seen.items() if len(ids) > 1)
        return out


def _rewrite(obj: Any, resolved: dict[str, str], local: set[str]) -> Any:
    """A copy with urn:uuid references to already-written resources replaced by their server ids."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str) and v.startswith("urn:uuid:") and v not in local:
                if v not in resolved:
                    raise ServerError("PUT", "", detail=f"internal: reference {v} is neither written nor in "
                                      "this Bundle")
                out[k] = resolved[v]
            elif isinstance(v, (dict, list)):
                out[k] = _rewrite(v, resolved, local)
            else:
                out[k] = v
        return out
    if isinstance(obj, list):
        return [_rewrite(v, resolved, local) for v in obj]
    return obj


def _created(status: str, existed: bool, version: str | None) -> bool:
    """201, or 200 to a resource the read did not find: servers answer 200 to an update-as-create by id
    (Medplum) -- unless a numeric version above 1 says another writer created it first."""
    if status == "201":
        return True
    if existed:
        return False
    return not (version is not None and version.isdigit() and version != "1")


def _version(resp: dict[str, Any], location: str) -> str | None:
    """The version the server gave: ETag W/"n", else the location's _history/n; None when it says neither."""
    etag = resp.get("etag")
    if isinstance(etag, str) and '"' in etag:
        return etag.split('"')[1]
    return location.split("/_history/")[1].strip("/") if "/_history/" in location else None


def _location_of(resource: Any) -> str | None:
    if isinstance(resource, dict) and resource.get("id"):
        return f"{resource.get('resourceType')}/{resource['id']}"
    return None


def _keys_of(res: dict[str, Any], param: str) -> list[str]:
    if param == "_tag":
        return [f"{t.get('system')}|{t.get('code')}" for t in (res.get("meta") or {}).get("tag") or []]
    ids = res.get("identifier") or []
    ids = ids if isinstance(ids, list) else [ids]  # R4 AdverseEvent.identifier is 0..1, not a list
    return [f"{i.get('system')}|{i.get('value')}" for i in ids if isinstance(i, dict)]


def _has_code(outcome: Any, code: str) -> bool:
    return isinstance(outcome, dict) and any(isinstance(i, dict) and i.get("code") == code
                                             for i in outcome.get("issue") or [])


def _multiple_matches(status: int | None, outcome: Any) -> bool:
    """412 (FHIR R4 conditional update), or a 400 whose OperationOutcome says so: Medplum 5.2 answers
    400 "Conditional PUT matched multiple resources" (issue code `invalid`)."""
    if status == 412 or _has_code(outcome, "multiple-matches"):
        return True
    text = outcome_text(outcome).lower()
    return status in (400, 409, 422) and "multiple" in text and "match" in text


def _version_conflict(status: int | None, outcome: Any, chunk: list[Op]) -> bool:
    """412 that is not "multiple matches", on a Bundle with If-Match entries: a newer version exists."""
    return status == 412 and any(o.if_match for o in chunk) and not _has_code(outcome, "multiple-matches")


def _too_big(exc: ServerError) -> bool:
    """413 (HAPI: HAPI-0528 "Transaction Bundle Too large", PayloadTooLargeException), a too-costly/too-long
    issue, or the texts servers use for their limits with a plain 400 (README "Server limits")."""
    if exc.status == 413 or (exc.status in (400, 422) and any(_has_code(exc.outcome, c) for c in TOO_BIG_CODES)):
        return True
    text = outcome_text(exc.outcome).lower()
    return exc.status in (400, 422) and any(t in text for t in TOO_BIG_TEXTS)


def _refuses_transactions(exc: ServerError) -> bool:
    """405/501, or 400/422 'not-supported': the server does not do transactions at all."""
    return exc.status in (405, 501) or (exc.status in (400, 422) and _has_code(exc.outcome, "not-supported"))
