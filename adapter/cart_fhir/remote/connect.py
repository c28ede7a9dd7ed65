"""Build the FHIR client a set of server settings describes: transport, retries and auth strategy."""

from __future__ import annotations

from ..errors import ConfigError
from .auth import Auth, BearerToken, NoAuth, SmartBackendAuth, load_private_key
from .client import FhirClient
from .http import FhirHttp, RetryPolicy
from .settings import ServerSettings


def make_auth(settings: ServerSettings) -> Auth:
    kind = settings.auth_kind()
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        return BearerToken(settings.bearer_token())
    if not settings.client_id or not settings.private_key:
        raise ConfigError("SMART Backend Services needs a client id and a private key "
                          "(CART_FHIR_CLIENT_ID / --client-id and CART_FHIR_PRIVATE_KEY / --private-key)")
    key, kid, alg = load_private_key(settings.private_key, settings.kid)
    return SmartBackendAuth(settings.client_id, key, scope=settings.scope, token_url=settings.token_url,
                            fhir_base=settings.base_url, kid=kid, alg=alg, jku=settings.jku)


def transport(settings: ServerSettings) -> FhirHttp:
    """The one place settings become a transport (auth, timeout, retries); close it, or use it as context."""
    return FhirHttp(settings.base_url, auth=make_auth(settings), timeout=settings.timeout,
                    retry=RetryPolicy(attempts=settings.retries))


def connect(settings: ServerSettings) -> FhirClient:
    """A FHIR client over `transport(settings)`, with the settings' search limits."""
    return FhirClient(transport(settings), page_size=settings.page_size, max_resources=settings.max_resources)
