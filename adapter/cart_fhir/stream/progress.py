"""Progress on stderr: a tqdm bar when a person watches (a TTY, not -q), nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """One bar at a time; every method is a no-op when disabled, so callers never test for it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None

    def start(self, desc: str, total: int, unit: str, scale: bool = False) -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm  # imported only when a bar is shown

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scale,
                             unit_divisor=1024 if scale else 1000,
                             file=sys.stderr, dynamic_ncols=True, leave=False)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, **fields: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
