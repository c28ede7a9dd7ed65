"""Reading FHIR R4 input as plain JSON: containers, references, units, codes, and the patient timeline."""
