"""Streamed, parallel grading of large NDJSON inputs: partition by patient, grade buckets in processes."""
