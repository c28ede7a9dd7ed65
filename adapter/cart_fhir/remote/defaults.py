"""FHIR server setting defaults and choices, one place each, without the settings machinery: the command
line builds its flags and help texts from them without importing pydantic-settings (issue 18, start-up)."""

from __future__ import annotations

from typing import Final, Literal

AuthKind = Literal["none", "bearer", "smart"]
WriteMode = Literal["auto", "transaction", "batch"]  # auto: transactions unless the server refuses them

# Defaults, one place each: the settings (settings.py), the classes that take them as arguments (FhirHttp,
# RetryPolicy, FhirClient, ResultWriter) and the CLI's help texts all read them from here.
PAGE_SIZE: Final = 1000  # _count of searches and $everything
CHUNK_SIZE: Final = 100  # entries per transaction
TIMEOUT: Final = 60.0  # read timeout per request, seconds
RETRIES: Final = 4  # attempts in all, for 429/502/503/504 and dropped connections
MAX_RESOURCES: Final = 100_000  # stop reading one search after this many
SCOPE: Final = ("system/Patient.rs system/Observation.rs system/MedicationAdministration.rs "
                "system/MedicationStatement.rs system/Medication.rs system/Procedure.rs system/Condition.rs "
                "system/Group.rs system/Observation.cu system/Condition.cu system/AdverseEvent.cu "
                "system/Provenance.cu system/Device.cu")
