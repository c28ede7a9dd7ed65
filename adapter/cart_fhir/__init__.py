"""cart-fhir: grade CAR-T cell therapy toxicities from FHIR R4 data and write them back as FHIR."""

__version__ = "0.1.0"
