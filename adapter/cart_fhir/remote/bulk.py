"""FHIR Bulk Data export (Bulk Data Access IG 2.0.0): kick-off, status polling, resumable NDJSON downloads."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import requests
import urllib3

from ..errors import BadInput, Location
from .bulk_state import ExportParams, ExportState, clear_state, load_state, save_state, state_path
from .errors import AuthFailed, ServerError, ServerUnreachable, outcome_text
from .http import NO_ANSWER, FhirHttp, origin, parse_retry_after

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SAFE_TYPE = re.compile(r"^[A-Za-z]{1,64}$")


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How patiently to wait for an export: Retry-After when given (capped), else doubling backoff."""

    timeout: float = 3600.0  # seconds from kick-off until we give up (and cancel the job)
    first: float = 1.0  # seconds before the first re-poll when the server gives no Retry-After
    max_interval: float = 120.0  # cap on any single wait, Retry-After included

    def delay(self, polls: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_interval)
        return min(self.first * 2 ** (polls - 1), self.max_interval)


class ExportTimedOut(ServerError):
    """The export did not finish in time; the job has been cancelled on the server."""


class BulkExport:
    """One server's $export: everything goes through the FhirHttp session, auth and retry policy."""

    def __init__(self, http: FhirHttp, *, poll: PollPolicy = PollPolicy(),
                 allowed_origins: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.poll_policy = poll
        # Output files may live elsewhere (a storage bucket): only origins the user named are fetched.
        self._allowed = {origin(self.http.base_url), *(origin(o) for o in allowed_origins)}
        self._clock = clock

    def run(self, out_dir: str | Path, *, group: str | None = None, since: str | None = None,
            types: str | None = None, restart: bool = False) -> list[Path]:
        """Kick off (or resume the export saved in out_dir), wait for the manifest, download every output
        file; returns the NDJSON paths. The status URL is saved as soon as the server gives it, so an
        interrupted run resumes it instead of starting a second export job on the server."""
        folder = Path(out_dir)
        params = ExportParams(self.http.base_url, group, since, types)
        manifest = self._resume(folder, params, restart)
        resumed = manifest is not None
        if manifest is None:
            status_url = self.kick_off(group=group, since=since, types=types)
            save_state(folder, ExportState(params, status_url, datetime.now(UTC).isoformat(timespec="seconds")))
            try:
                manifest = self.wait(status_url)
            except ExportTimedOut:
                clear_state(folder)  # the job was cancelled: nothing left to resume
                raise
        paths = self.download(manifest, folder, resume=resumed)
        clear_state(folder)
        return paths

    def _resume(self, folder: Path, params: ExportParams, restart: bool) -> dict[str, Any] | None:
        """The manifest of the export saved in folder, or None when a new export must be kicked off."""
        state = load_state(folder)
        if state is None:
            return None
        if restart:
            if state.params.base_url == self.http.base_url:
                self.cancel(state.status_url)  # best effort: do not leave the old job running
            clear_state(folder)
            return None
        if state.params != params:
            raise BadInput(f"this folder holds an unfinished export of {state.params.describe()} (kicked off "
                           f"{state.kicked_off}), not of {params.describe()}: use the same parameters to resume "
                           "it, --restart to start a new one, or another folder", Location(str(state_path(folder))))
        log.warning("resuming the export kicked off %s (status URL saved in %s)", state.kicked_off,
                    state_path(folder))
        try:
            return self.wait(state.status_url)
        except ExportTimedOut:
            clear_state(folder)
            raise
        except ServerError as exc:
            # The server forgets finished or abandoned jobs (IG 2.0.0: 404 after DELETE or expiry).
            if exc.status not in (404, 410):
                raise
            log.warning("the saved export status URL has expired (HTTP %s): starting a new export", exc.status)
            clear_state(folder)
            return None

    # ---- kick-off ----------------------------------------------------------------------------

    def kick_off(self, *, group: str | None = None, since: str | None = None, types: str | None = None) -> str:
        """POST the kick-off (GET when the server answers 404/405 to POST); returns the status URL."""
        path = f"Group/{group}/$export" if group else "Patient/$export"
        headers = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
        query = {k: v for k, v in (("_type", types), ("_since", since)) if v}
        params = [{"name": k, "valueString" if k == "_type" else "valueInstant": v} for k, v in query.items()]
        body = {"resourceType": "Parameters", "parameter": params} if params else {"resourceType": "Parameters"}
        method = "POST"
        try:
            reply = self.http.request(method, path, json=body, headers=headers)
        except ServerError as exc:
            # Kick-off by POST is optional for servers (IG 2.0.0 §kick-off); many answer 405 or 404.
            if exc.status not in (404, 405):
                raise
            log.info("export kick-off: POST answered %s, trying GET", exc.status)
            method = "GET"
            reply = self.http.request(method, path, params=query or None, headers=headers)
        location = reply.headers.get("Content-Location")
        if reply.status != 202 or not location:
            raise ServerError(method, reply.url, reply.status,
                              detail="export kick-off: expected 202 Accepted with a Content-Location status URL")
        return location

    # ---- status ------------------------------------------------------------------------------

    def wait(self, status_url: str) -> dict[str, Any]:
        """Poll the status URL until the manifest; cancel the job and raise ServerError on timeout."""
        deadline = self._clock() + self.poll_policy.timeout
        polls = 0
        while True:
            reply = self.http.request("GET", status_url)
            if reply.status == 200:
                return _check_manifest(status_url, reply.body)
            if reply.status != 202:
                raise ServerError("GET", status_url, reply.status, detail="export status: unexpected answer")
            polls += 1
            progress = reply.headers.get("X-Progress")
            wait = self.poll_policy.delay(polls, parse_retry_after(reply.headers.get("Retry-After")))
            if self._clock() + wait > deadline:
                self.cancel(status_url)
                raise ExportTimedOut("GET", status_url, 202,
                                     detail=f"export not finished after {self.poll_policy.timeout:.0f} s (cancelled)")
            log.debug("export in progress (%s); polling again in %.1f s", progress or "no progress given", wait)
            self.http.sleep(wait)

    def cancel(self, status_url: str) -> None:
        """DELETE the status URL (best effort: a failure here is logged, not raised)."""
        try:
            self.http.request("DELETE", status_url)
        except ServerError as exc:
            log.warning("could not cancel the export job: %s", exc)

    # ---- downloads ---------------------------------------------------------------------------

    def download(self, manifest: dict[str, Any], out_dir: Path, *, resume: bool = False) -> list[Path]:
        """Every output file to out_dir as <Type>.<n>.ndjson; error files (OperationOutcomes) to out_dir/errors.

        resume: the manifest is that of the export an earlier run began downloading (same status URL), so
        files already complete are kept and partial ones continue where they stopped."""
        out_dir.mkdir(parents=True, exist_ok=True)
        token = bool(manifest.get("requiresAccessToken"))
        errors = [self._fetch(f, out_dir / "errors", n, token, resume)
                  for n, f in enumerate(manifest.get("error") or [])]
        texts = [t for p in errors for t in _outcome_lines(p)]
        paths = [self._fetch(f, out_dir, n, token, resume) for n, f in enumerate(manifest.get("output") or [])]
        if texts and not paths:
            raise ServerError("GET", str(manifest.get("request") or self.http.base_url),
                              detail="export failed: " + "; ".join(texts[:5]))
        if texts:
            log.warning("export reported %d error(s); see %s", len(texts), out_dir / "errors")
        return paths

    def _fetch(self, item: Any, folder: Path, n: int, token: bool, resume: bool) -> Path:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ServerError("GET", self.http.base_url, detail="export manifest: an output entry has no url")
        url, rtype = item["url"], str(item.get("type") or "Resource")
        if origin(url) not in self._allowed:
            raise ServerError("GET", url, detail=f"refusing to download from another host than {self.http.base_url} "
                                                 "(allow its origin explicitly)")
        if not _SAFE_TYPE.match(rtype):
            raise ServerError("GET", url, detail=f"export manifest: bad resource type {rtype!r}")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{rtype}.{n:03d}.ndjson"
        part = target.with_suffix(".ndjson.part")
        if resume and target.exists():
            return target  # renamed from .part only once complete
        if not resume:
            part.unlink(missing_ok=True)  # a part of another export's file
        self._stream(url, part, token)
        part.replace(target)
        return target

    def _stream(self, url: str, part: Path, token: bool) -> None:
        """Download to `part`, resuming with Range after a dropped connection; retries like FhirHttp."""
        failures, reauthenticated = 0, False
        while True:
            have = part.stat().st_size if part.exists() else 0
            # identity: Range offsets count the bytes we store, not those of a compressed body
            headers = {"Accept": NDJSON, "Accept-Encoding": "identity", "User-Agent": self.http.user_agent}
            if token and self.http.auth is not None:
                headers.update(self.http.auth.headers(self.http))
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with self.http.session.get(url, headers=headers, stream=True, timeout=self.http.timeouts,
                                           allow_redirects=False) as resp:
                    self.http.count_round_trip()
                    status = resp.status_code
                    if status == 401 and token and not reauthenticated and self.http.auth is not None \
                            and self.http.auth.refresh():
                        reauthenticated = True
                        continue
                    if status in self.http.retry.statuses:
                        failures += 1
                        if failures >= self.http.retry.attempts:
                            raise ServerError("GET", url, status, detail="export file download")
                        self.http.pause(failures, parse_retry_after(resp.headers.get("Retry-After")))
                        continue
                    if status == 416 and have and _total(resp) == have:
                        return  # we already hold the whole file
                    if status in (401, 403):
                        raise AuthFailed("GET", url, status, detail="export file download")
                    if status not in (200, 206):
                        raise ServerError("GET", url, status, detail="export file download")
                    if status == 206 and _range_start(resp) != have:
                        failures += 1
                        if failures >= self.http.retry.attempts:
                            raise ServerError("GET", url, status, detail="export file: wrong Content-Range")
                        part.unlink(missing_ok=True)  # not the range we asked for: start again
                        continue
                    mode = "ab" if status == 206 else "wb"  # 200: the server ignored Range, whole file again
                    expected = _expected_end(resp, have if status == 206 else 0)
                    with open(part, mode) as fh:
                        _copy(resp, fh)
                    if expected is not None and part.stat().st_size < expected:
                        raise requests.exceptions.ChunkedEncodingError("body shorter than announced")
                    return
            except NO_ANSWER as exc:
                failures += 1
                got = part.stat().st_size if part.exists() else 0
                log.info("export download interrupted at %d bytes (%s)", got, type(exc).__name__)
                if failures >= self.http.retry.attempts:
                    raise ServerUnreachable("GET", url, f"{type(exc).__name__} (after {failures} attempts)") from exc
                self.http.pause(failures, None)


def _copy(resp: requests.Response, fh: IO[bytes]) -> None:
    """Write the body as it arrives: read1 hands over what came before a dropped connection (iter_content
    reads whole chunks and would lose a partial one), so a resume starts from every byte received."""
    raw = resp.raw
    try:
        while chunk := raw.read1(CHUNK, decode_content=True):
            fh.write(chunk)
    except urllib3.exceptions.HTTPError as exc:  # what iter_content would have turned into requests errors
        raise requests.exceptions.ChunkedEncodingError(str(exc)) from exc


def _check_manifest(url: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("output", []), list):
        raise ServerError("GET", url, 200, detail="export status: the manifest is not a JSON object with output[]")
    if body.get("resourceType") == "OperationOutcome":
        raise ServerError("GET", url, 200, outcome=body, detail="export failed")
    return body


def _outcome_lines(path: Path) -> list[str]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            text = outcome_text(orjson.loads(line)) if line.strip() else ""
        except orjson.JSONDecodeError:
            text = ""
        if text:
            out.append(text)
    return out


def _range_start(resp: requests.Response) -> int | None:
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _total(resp: requests.Response) -> int | None:
    m = re.match(r"^bytes \*/(\d+)$", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _expected_end(resp: requests.Response, start: int) -> int | None:
    """Size the file should have after this answer (Content-Length counts only this answer's bytes)."""
    length = resp.headers.get("Content-Length")
    if resp.headers.get("Content-Encoding") or not (length and length.isdigit()):
        return None
    return start + int(length)
