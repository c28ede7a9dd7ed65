"""Errors of the FHIR-server client layer, split by what the caller should do (house style habit 6)."""

from __future__ import annotations

import html
import re
from typing import Any

from ..errors import AdapterError

EXCERPT_CHARS = 200  # non-FHIR error bodies (proxy HTML pages) are cut to this many characters

_SCRIPT_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class ServerError(AdapterError):
    """The FHIR server answered with an error status, or an unusable answer; give up (or report it)."""

    def __init__(self, method: str, url: str, status: int | None = None, *,
                 outcome: dict[str, Any] | None = None, detail: str = "") -> None:
        self.method = method
        self.url = url
        self.status = status
        self.outcome = outcome
        # What we know about the failure, then what the server said about it.
        self.text = "; ".join(t for t in (detail, outcome_text(outcome)) if t)
        head = " ".join(p for p in (method, url) if p)
        parts = [head, f"HTTP {status}" if status is not None else "", self.text]
        self.message = ": ".join(p for p in parts if p)
        super().__init__(self.message)


class ServerUnreachable(ServerError):
    """No answer at all (connection refused or dropped, timeout) after the retries: try again later."""

    def __init__(self, method: str, url: str, detail: str) -> None:
        super().__init__(method, url, None, detail=detail)


class DeadlineExceeded(ServerUnreachable):
    """The request's time budget (remote/deadline.py) ran out before the server answered: nothing more is sent."""


class AuthFailed(ServerError):
    """401/403 after the one re-authentication, or the token endpoint refused us: fix the credentials."""


def status_code(status: Any) -> int | None:
    """The HTTP status of a Bundle entry's `response.status` ("201" or "201 Created"); None when unreadable."""
    head = str(status).split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def outcome_text(outcome: dict[str, Any] | None) -> str:
    """One line from an OperationOutcome: each issue's details.text and diagnostics (HAPI: diagnostics)."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    texts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        raw = [details.get("text") if isinstance(details, dict) else None, issue.get("diagnostics")]
        found = [t.strip() for t in raw if isinstance(t, str) and t.strip()]
        if not found and isinstance(issue.get("code"), str):
            found = [f"issue code {issue['code']}"]  # a bare issue still says *something* (e.g. not-found)
        texts.extend(t for t in found if t not in texts)
    return "; ".join(texts)


def body_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of a non-FHIR body as one line: HTML tags, scripts and styles dropped, entities decoded."""
    text = _TAG.sub(" ", _SCRIPT_STYLE.sub(" ", text))
    text = _SPACE.sub(" ", html.unescape(text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
