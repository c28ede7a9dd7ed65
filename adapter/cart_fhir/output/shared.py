"""Read-only dicts and lists: the parts many output resources share (output/templates.py builds them).

A run writes ~15,000 resources whose profile, category, codes, method, device reference and most
components repeat: each is built once and the same object is put in every resource that carries it
(issue 18, "a lean output writer"). Output dicts are only serialised, so sharing is safe as long as nobody
changes one in place: `SharedDict` and `SharedList` refuse every change (TypeError), so a consumer that
would edit a resource in place (a write-back adding an id, a tag) fails loudly instead of silently changing
every other resource. Copy first: `copy.deepcopy` of a resource gives plain dicts and lists throughout (the
caller's to change), as do `dict(x)`, `list(x)`, `copy.copy` one level down and the rebuilds remote/write.py
and ours.py do. orjson and json serialise them as the dict and list they are.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError("a shared output template cannot be changed in place (output/templates.py): copy it first")


class SharedDict(dict[str, Any]):
    """A dict that refuses changes: a part shared by many output resources."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)  # a copy is the caller's to change

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple[type[SharedDict], tuple[dict[str, Any]]]:
        return SharedDict, (dict(self),)


class SharedList(list[Any]):
    """A list that refuses changes: a part shared by many output resources."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = pop = remove = clear = \
        sort = reverse = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(v, memo) for v in self]

    def __reduce__(self) -> tuple[type[SharedList], tuple[list[Any]]]:
        return SharedList, (list(self),)


def shared(obj: Any) -> Any:
    """A read-only deep copy of a JSON value (dicts and lists become SharedDict and SharedList)."""
    if isinstance(obj, dict):
        return obj if type(obj) is SharedDict else SharedDict({k: shared(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return obj if type(obj) is SharedList else SharedList(shared(v) for v in obj)
    return obj
