"""Per-operation guards: the bearer token and its SMART scopes, and the JSON body of a request."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

import orjson
from flask import g, request
from gunicorn.http.errors import ParseException

from .context import services
from .errors import ClientTooSlow, ServiceError

F = TypeVar("F", bound=Callable[..., Any])
JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})


def requires(*scopes: str, extra: Callable[[], Iterable[str]] | None = None) -> Callable[[F], F]:
    """Check the caller's token and that it grants `scopes` (SMART v2 form); `extra` adds scopes that depend
    on the request (e.g. write scopes when writeBack=true). No-op when inbound auth is off."""
    def wrap(fn: F) -> F:
        @wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            svc = services()
            if svc.verifier is not None:
                from .security import check_scopes

                principal = svc.verifier.verify(request.headers.get("Authorization"))
                needed = list(scopes) + (list(extra()) if extra is not None else [])
                check_scopes(principal, needed)
                g.principal = principal
            return fn(*args, **kwargs)
        guarded.required_scopes = scopes  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]
    return wrap


def json_body() -> Any:
    """The request body as JSON: 415 for another media type, 413 over the limit, 400 naming where it broke."""
    mimetype = (request.mimetype or "").lower()
    if mimetype not in JSON_TYPES:
        raise ServiceError(415, f"Content-Type must be application/fhir+json (or application/json), "
                                f"not {request.mimetype or 'missing'}")
    try:
        data = request.get_data(cache=False)  # raises 413 beyond MAX_CONTENT_LENGTH
    except ClientTooSlow as exc:  # the server's body budget (worker.py) ran out
        raise ServiceError(408, "the request body was not received in time", headers={"Connection": "close"}) \
            from exc
    except ParseException as exc:  # gunicorn reads the body as the app asks: a broken chunked encoding is here
        raise ServiceError(400, f"malformed request body framing ({type(exc).__name__})", code="structure") from exc
    except OSError as exc:  # the client went away mid-body (gunicorn's NoMoreData is an IOError)
        raise ServiceError(400, "the request body ended early", code="incomplete") from exc
    if not data.strip():
        raise ServiceError(400, "the request body is empty: expected a FHIR resource")
    limit = services().settings.max_entries
    # Before parsing: memory grows with the number of JSON objects, not bytes (380k tiny Patients in 20 MiB took
    # ~900 MB). Every resource names its resourceType once, so this count bounds them without parsing anything.
    if data.count(b'"resourceType"') > limit:
        raise ServiceError(413, f"the body holds more than {limit} resources (CART_FHIR_MAX_ENTRIES): a CAR-T "
                                "patient's record needs far fewer; send fewer patients per request",
                           code="too-costly")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, f"the body is not valid JSON: {exc}", code="structure") from exc
