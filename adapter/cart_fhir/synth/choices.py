"""The synth command's choices (output format, noise level), apart from the generator: the command line
offers them without importing the generator, its table and its models (issue 18: a file run's start-up)."""

from __future__ import annotations

from enum import Enum


class Format(str, Enum):
    BUNDLE = "bundle"
    NDJSON = "ndjson"
    TRANSACTION = "transaction"  # one transaction Bundle per patient, PUT Type/id: seeds a sandbox server as is


class Noise(str, Enum):
    """How untidy the written feed is (synth/noise.py says what each level does)."""

    NONE = "none"
    SOME = "some"
    HEAVY = "heavy"
