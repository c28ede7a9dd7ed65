"""FHIR-server client layer: transport (http), authentication (auth), errors, and the client built on them."""
