"""FHIR JSON shape checks for the elements the index and extractor read (list vs object, strings).

A wrong shape is bad input naming the resource and element, never a silent skip (issue 13 item 5): a
`code.coding` given as an object would otherwise read as "no code we know" and drop the reading. Messages
say what was found (a JSON type), never the value: resource contents are PHI.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import BadInput, Location, json_type, shown


class Located(Protocol):
    """What a check needs of the resource it checks: its Location, built only for a message (Item, Indexed)."""

    @property
    def loc(self) -> Location: ...


_CODING_STRINGS = ("system", "code", "display", "version")


def codeable(cc: Any, path: str, at: Located) -> None:
    """A CodeableConcept: an object whose `coding` is a list of Coding objects with string parts."""
    if cc is None:
        return
    if type(cc) is not dict:
        raise BadInput(f"{path} must be a CodeableConcept object, got {json_type(cc)}", at.loc, shown(cc))
    text = cc.get("text")
    if text is not None and type(text) is not str:
        raise BadInput(f"{path}.text must be a string, got {json_type(text)}", at.loc, shown(text))
    coding = cc.get("coding")
    if coding is None:
        return
    if type(coding) is not list:
        raise BadInput(f"{path}.coding must be a list of Coding objects, got {json_type(coding)}", at.loc,
                       shown(coding))
    for i, c in enumerate(coding):
        if type(c) is not dict:
            raise BadInput(f"{path}.coding[{i}] must be a Coding object, got {json_type(c)}", at.loc, shown(c))
        for key in _CODING_STRINGS:
            v = c.get(key)
            if v is not None and type(v) is not str:
                raise BadInput(f"{path}.coding[{i}].{key} must be a string, got {json_type(v)}", at.loc, shown(v))


def _items(value: Any, path: str, at: Located) -> list[Any]:
    """The items of a list element (none when absent); bad input when it is not a list."""
    if value is None:
        return []
    if type(value) is not list:
        raise BadInput(f"{path} must be a list, got {json_type(value)}", at.loc, shown(value))
    return value


def codeables(value: Any, path: str, at: Located) -> None:
    """A list of CodeableConcepts (Observation.category, interpretation, reasonCode, ...)."""
    for i, cc in enumerate(_items(value, path, at)):
        codeable(cc, f"{path}[{i}]", at)


def obj(value: Any, path: str, at: Located, what: str = "an object") -> None:
    if value is not None and type(value) is not dict:
        raise BadInput(f"{path} must be {what}, got {json_type(value)}", at.loc, shown(value))


def objects(value: Any, path: str, at: Located) -> None:
    """A list of objects (component, referenceRange, reasonReference, dosage of a MedicationStatement)."""
    for i, v in enumerate(_items(value, path, at)):
        if type(v) is not dict:
            raise BadInput(f"{path}[{i}] must be an object, got {json_type(v)}", at.loc, shown(v))


def string(value: Any, path: str, at: Located) -> None:
    if value is not None and type(value) is not str:
        raise BadInput(f"{path} must be a string, got {json_type(value)}", at.loc, shown(value))
