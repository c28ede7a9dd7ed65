"""Pure graders: patient time axis in, day-by-day grades with their evidence out. No FHIR, no I/O."""
