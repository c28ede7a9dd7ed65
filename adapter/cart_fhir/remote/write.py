"""Write graded resources to a FHIR server: per patient, transactions of conditional updates, idempotently.

Every resource carries a deterministic business identifier (output-contract.md), so each entry is
`PUT [type]?identifier=system|value`: the first run creates, every later run updates in place. A patient's
resources go in one transaction when they fit the chunk size, else in several, each all-or-nothing, in
reference order (a chunk's references to earlier chunks are rewritten to the ids the server gave); the
Provenance comes last, so a patient with a Provenance is completely written. Servers that refuse
transactions get batches, one per reference level. A 412 (the identifier matches several resources) stops
that patient and names the duplicates: retrying could only make it worse.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..ingest.index import ref_key
from ..output.resources import PatientResources, Written
from .client import FhirClient
from .errors import ServerError, outcome_text, status_code
from .locks import PatientLocks
from .settings import CHUNK_SIZE, WriteMode

log = logging.getLogger(__name__)

Mode = WriteMode
# Issue codes (and statuses) that mean "this Bundle is too big for me": halve the chunk and try again.
TOO_BIG_CODES = frozenset({"too-costly", "too-long"})


@dataclass(slots=True)
class PatientWrite:
    patient_key: str
    resources: int = 0
    created: int = 0
    updated: int = 0
    requests: int = 0  # transaction or batch Bundles posted (retries not counted; see round_trips)
    round_trips: int = 0
    error: str | None = None
    duplicates: list[str] = field(default_factory=list)  # "Observation identifier sys|val: Observation/1, ..."

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class WriteReport:
    server: str
    mode: str = "transaction"
    patients: list[PatientWrite] = field(default_factory=list)
    round_trips: int = 0

    @property
    def failed(self) -> list[PatientWrite]:
        return [p for p in self.patients if not p.ok]

    def lines(self) -> list[str]:
        created = sum(p.created for p in self.patients)
        updated = sum(p.updated for p in self.patients)
        out = [(f"write-back to {self.server}: {len(self.patients) - len(self.failed)} of {len(self.patients)} "
                f"patients written ({created} created, {updated} updated) in {self.round_trips} round trips, "
                f"{self.mode} mode")]
        for p in self.failed:
            out.append(f"error: {p.patient_key}: not (completely) written: {p.error}")
            out.extend(f"error: {p.patient_key}: duplicate on the server: {d}" for d in p.duplicates)
        return out


class WriteFailed(ServerError):
    """One patient's write stopped (the report says which); other patients go on."""


class ResultWriter:
    """Writes the engine Device once, then each patient's resources under that patient's lock."""

    def __init__(self, client: FhirClient, *, chunk_size: int = CHUNK_SIZE, mode: Mode = "auto",
                 locks: PatientLocks | None = None) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.client = client
        self.chunk_size = chunk_size
        self.mode = mode
        self.locks = locks or PatientLocks(client.base_url)
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

    def write_patient(self, device: Written, group: PatientResources) -> PatientWrite:
        """One patient's resources, under that patient's lock; the engine Device first if not yet written."""
        if device.full_url not in self._resolved:
            self._write_device(device)
        pw = PatientWrite(group.patient_key, resources=len(group.resources))
        start = self.client.http.round_trips
        with self.locks.hold(group.patient_key):
            try:
                if self._mode() == "batch":
                    self._write_batches(group.resources, pw)
                else:
                    self._write_transactions(group.resources, pw)
            except WriteFailed as exc:
                pw.error = exc.message
            except ServerError as exc:
                if exc.status is None or exc.status in (401, 403):
                    raise  # the server is gone or refuses us: no other patient would fare better
                pw.error = exc.message
        pw.round_trips = self.client.http.round_trips - start
        log.debug("wrote %s: %d created, %d updated, %d round trips%s", group.patient_key, pw.created,
                  pw.updated, pw.round_trips, "" if pw.ok else " (failed)")
        return pw

    # ---- transactions ----------------------------------------------------------------------------

    def _mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "transaction" if self.client.capabilities().transaction else "batch"

    def _write_device(self, device: Written) -> None:
        pw = PatientWrite("Device")
        if self._mode() == "batch":
            self._write_batches([device], pw)
        else:
            self._write_transactions([device], pw)

    def _write_transactions(self, resources: list[Written], pw: PatientWrite) -> None:
        pending = _by_level(resources)
        size = self.chunk_size
        while pending:
            chunk = pending[:size]
            try:
                self._post_chunk(chunk, pw, "transaction")
            except ServerError as exc:
                if _too_big(exc) and size > 1:
                    size = max(1, size // 2)
                    log.info("the server refused a %d-entry transaction as too big: chunks of %d", len(chunk), size)
                    continue
                if _refuses_transactions(exc) and self.mode == "auto":
                    log.warning("the server refuses transactions (HTTP %s): writing batches instead", exc.status)
                    self.mode = "batch"
                    self._write_batches(pending, pw)
                    return
                raise
            pending = pending[len(chunk):]

    def _post_chunk(self, chunk: list[Written], pw: PatientWrite, kind: str) -> None:
        local = {w.full_url for w in chunk} if kind == "transaction" else set()
        entries = [self._entry(w, local) for w in chunk]
        pw.requests += 1
        try:
            answer = self.client.bundle({"resourceType": "Bundle", "type": kind, "entry": entries})
        except ServerError as exc:
            if _multiple_matches(exc.status, exc.outcome):
                pw.duplicates = self._duplicates(chunk)
                raise WriteFailed("POST", exc.url, exc.status, outcome=exc.outcome,
                                  detail="a business identifier matches several resources on the server; "
                                         "nothing of this transaction was written") from exc
            raise
        replies = answer.get("entry") or []
        if len(replies) != len(chunk):
            raise WriteFailed("POST", self.client.base_url, 200,
                              detail=f"a {kind} of {len(chunk)} entries answered with {len(replies)} entries")
        failures = []
        for w, reply in zip(chunk, replies, strict=True):
            resp = reply.get("response") or {}
            status = str(resp.get("status", "")).split(" ")[0]
            if not status.startswith("2"):
                failures.append((w, status, resp.get("outcome")))
                continue
            location = resp.get("location") or _location_of(reply.get("resource"))
            if not isinstance(location, str):
                raise WriteFailed("POST", self.client.base_url, 200,
                                  detail=f"{w.condition}: the server answered {status} without a location")
            self._resolved[w.full_url] = ref_key(location)
            if status == "201":
                pw.created += 1
            else:
                pw.updated += 1
        if failures:
            if any(_multiple_matches(status_code(s), o) for _, s, o in failures):
                pw.duplicates = self._duplicates([w for w, s, _ in failures if s == "412"] or chunk)
            first = failures[0]
            raise WriteFailed("POST", self.client.base_url, status_code(first[1]), outcome=first[2],
                              detail=f"{len(failures)} of {len(chunk)} {kind} entries refused, first "
                                     f"{first[0].condition}: HTTP {first[1]}")

    def _write_batches(self, resources: list[Written], pw: PatientWrite) -> None:
        """No transactions: one batch per reference level, so every reference points at a written resource."""
        for level in _levels(resources):
            for i in range(0, len(level), self.chunk_size):
                self._post_chunk(level[i:i + self.chunk_size], pw, "batch")

    def _entry(self, w: Written, local: set[str]) -> dict[str, Any]:
        resource = _rewrite(w.resource, self._resolved, local)
        url = self._url(w)
        if "?" not in url:  # an update by id: the body's id must match the URL's (FHIR R4 update)
            resource["id"] = url.split("/", 1)[1]
        return {"fullUrl": w.full_url, "resource": resource, "request": {"method": "PUT", "url": url}}

    def _url(self, w: Written) -> str:
        """The conditional update URL; a server that cannot search that key gets a PUT by a stable id."""
        rtype, _, query = w.condition.partition("?")
        param, _, key = query.partition("=")
        if self.client.capabilities().searchable(rtype, param):
            return w.condition
        return f"{rtype}/cart-{key.rpartition('|')[2]}"

    def _duplicates(self, chunk: list[Written]) -> list[str]:
        """Which identifiers of the chunk match more than one resource (one search per resource type)."""
        by_type: dict[tuple[str, str], list[str]] = {}
        for w in chunk:
            rtype, _, query = w.condition.partition("?")
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


def _by_level(resources: list[Written]) -> list[Written]:
    return [w for level in _levels(resources) for w in level]


def _levels(resources: list[Written]) -> list[list[Written]]:
    """Resources grouped by reference depth within the list (0: refers to none of the others), order kept."""
    urls = {w.full_url for w in resources}
    depth: dict[str, int] = {}

    def level(w: Written, trail: frozenset[str]) -> int:
        if w.full_url in depth:
            return depth[w.full_url]
        deps = [by_url[u] for u in _urn_refs(w.resource) if u in urls and u != w.full_url and u not in trail]
        d = 1 + max((level(dep, trail | {w.full_url}) for dep in deps), default=-1)
        depth[w.full_url] = d
        return d

    by_url = {w.full_url: w for w in resources}
    out: dict[int, list[Written]] = {}
    for w in resources:
        out.setdefault(level(w, frozenset()), []).append(w)
    return [out[k] for k in sorted(out)]


def _urn_refs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str) and v.startswith("urn:uuid:"):
                yield v
            elif isinstance(v, (dict, list)):
                yield from _urn_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _urn_refs(v)


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


def _too_big(exc: ServerError) -> bool:
    return exc.status == 413 or (exc.status in (400, 422) and any(_has_code(exc.outcome, c) for c in TOO_BIG_CODES))


def _refuses_transactions(exc: ServerError) -> bool:
    """405/501, or 400/422 'not-supported': the server does not do transactions at all."""
    return exc.status in (405, 501) or (exc.status in (400, 422) and _has_code(exc.outcome, "not-supported"))
