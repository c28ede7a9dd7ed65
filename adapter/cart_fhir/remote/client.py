"""cart-fhir's one FHIR client: fhirpy's search vocabulary over our own transport (adapter/cart_fhir/remote/http.py).

fhirpy's SyncFHIRClient sends every call with module-level `requests.request` (no pooling, no timeout, HTTP
status lost on errors, no Retry-After; shared/notes/python-libraries.md section 2), so its one I/O hook,
`_do_request`, is routed through FhirHttp here. The rest of the project never imports fhirpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhirpy import SyncFHIRClient

from .errors import ServerError
from .http import FhirHttp
from .settings import MAX_RESOURCES, PAGE_SIZE

log = logging.getLogger(__name__)


def next_link(bundle: dict[str, Any]) -> str | None:
    """The Bundle's `next` page link, exactly as the server wrote it."""
    return next((ln["url"] for ln in bundle.get("link") or []
                 if isinstance(ln, dict) and ln.get("relation") == "next" and isinstance(ln.get("url"), str)), None)


def page_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A search page's resources, matches and includes; `search.mode = outcome` entries, and OperationOutcomes
    not marked as matches, are the server talking about the search, not data: dropped."""
    out = []
    for entry in bundle.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            continue
        mode = (entry.get("search") or {}).get("mode")
        if mode == "outcome" or (res.get("resourceType") == "OperationOutcome" and mode != "match"):
            log.info("a search page carried an OperationOutcome (skipped)")
            continue
        out.append(res)
    return out


class _Transport(SyncFHIRClient):
    """fhirpy's client with its single I/O hook going through FhirHttp (retries, timeouts, auth, status)."""

    def __init__(self, http: FhirHttp) -> None:
        super().__init__(http.base_url)
        self._http = http

    def _do_request(self, method: str, path: str, data: Any = None, params: Any = None,  # type: ignore[override]
                    extra_headers: Any = None, *, returning_status: bool = False) -> Any:
        reply = self._http.request(method.upper(), path, params=params, json=data, headers=extra_headers)
        return (reply.body, reply.status) if returning_status else reply.body


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server's CapabilityStatement says it does, as far as cart-fhir cares."""

    fhir_version: str | None = None
    transaction: bool = True  # assumed when the statement does not say (many servers omit system interactions)
    batch: bool = True
    everything: bool = False
    search_params: Mapping[str, frozenset[str]] = field(default_factory=dict)  # type -> parameter names
    declared: bool = False  # False: the server sent no usable CapabilityStatement; everything above is a guess

    def searchable(self, rtype: str, param: str) -> bool:
        """True when the server lists the search parameter for that type (or lists nothing at all)."""
        if not self.declared or rtype not in self.search_params:
            return True
        params = self.search_params[rtype]
        return not params or param in params

    @classmethod
    def from_statement(cls, cs: Any) -> Capabilities:
        if not isinstance(cs, dict) or cs.get("resourceType") != "CapabilityStatement":
            return cls()
        rest = next((r for r in cs.get("rest") or [] if isinstance(r, dict) and r.get("mode") == "server"), None)
        if rest is None:
            return cls(fhir_version=cs.get("fhirVersion"))
        system = {i.get("code") for i in rest.get("interaction") or [] if isinstance(i, dict)}
        ops = {o.get("name") for o in rest.get("operation") or [] if isinstance(o, dict)}
        params: dict[str, frozenset[str]] = {}
        for res in rest.get("resource") or []:
            if not isinstance(res, dict) or not isinstance(res.get("type"), str):
                continue
            params[res["type"]] = frozenset(p["name"] for p in res.get("searchParam") or []
                                            if isinstance(p, dict) and isinstance(p.get("name"), str))
            if res["type"] == "Patient":
                ops |= {o.get("name") for o in res.get("operation") or [] if isinstance(o, dict)}
        return cls(fhir_version=cs.get("fhirVersion"),
                   transaction="transaction" in system if system else True,
                   batch="batch" in system if system else True,
                   everything=bool(ops & {"everything", "patient-everything", "Patient-everything"}),
                   search_params=params, declared=True)


class FhirClient:
    """Read, search every page, and post transaction or batch Bundles; one per server and run."""

    def __init__(self, http: FhirHttp, *, page_size: int = PAGE_SIZE,
                 max_resources: int = MAX_RESOURCES) -> None:
        self.http = http
        self.page_size = page_size
        self.max_resources = max_resources
        self._fhirpy = _Transport(http)
        self._caps: Capabilities | None = None

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def capabilities(self) -> Capabilities:
        """Read once per client (GET metadata); a server without one gets conservative defaults."""
        if self._caps is None:
            try:
                self._caps = Capabilities.from_statement(self.http.get("metadata").body)
            except ServerError as exc:
                if exc.status is None or exc.status in (401, 403) or exc.status >= 500:
                    raise
                log.warning("no CapabilityStatement (%s): assuming no $everything, transactions allowed", exc.status)
                self._caps = Capabilities()
        return self._caps

    def read(self, rtype: str, rid: str) -> dict[str, Any]:
        body = self.http.get(f"{rtype}/{rid}").body
        if not isinstance(body, dict) or body.get("resourceType") != rtype:
            raise ServerError("GET", self.http.url(f"{rtype}/{rid}"), 200,
                              detail=f"the server did not answer a {rtype}")
        return body

    def search_params(self, rtype: str, *, include: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
        """fhirpy's search builder (`date__ge=...`, lists for AND, comma strings for OR); no I/O.
        `include` names reference parameters of `rtype` whose targets come along (`_include`)."""
        ss = self._fhirpy.resources(rtype).search(**params).limit(self.page_size)
        for param in include:
            ss = ss.include(rtype, param)
        return {k: list(v) for k, v in ss.params.items()}

    def search(self, rtype: str, *, include: tuple[str, ...] = (), **params: Any) -> Iterator[dict[str, Any]]:
        """Every resource of every page (matches and includes; outcome entries dropped, logged)."""
        yield from self.pages(rtype, self.search_params(rtype, include=include, **params))

    def pages(self, path: str, params: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
        """Follow `next` links verbatim (the server's own paging state), capped at max_resources."""
        url: str | None = path
        seen = 0
        while url is not None:
            reply = self.http.get(url, params)
            params = None  # a next link carries its own query
            bundle = reply.body
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise ServerError("GET", reply.url, reply.status, detail="the server did not answer a Bundle")
            for res in page_resources(bundle):
                seen += 1
                if seen > self.max_resources:
                    raise ServerError("GET", reply.url, detail=f"more than {self.max_resources} resources; "
                                      "raise the cap (--max-resources) or narrow the search")
                yield res
            url = next_link(bundle)

    def bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction or batch Bundle to the base; returns the response Bundle."""
        reply = self.http.post("", bundle)
        body = reply.body
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise ServerError("POST", reply.url, reply.status,
                              detail=f"the server did not answer a {bundle.get('type')} Bundle")
        return body

    def close(self) -> None:
        self.http.close()
