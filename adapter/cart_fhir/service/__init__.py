"""The cart-fhir web service: FHIR operations, CDS Hooks, under a production WSGI server."""

from .app import create_app

__all__ = ["create_app"]
