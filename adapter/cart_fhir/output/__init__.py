"""Pure translation of grading results into the FHIR R4 resources of output-contract.md."""
