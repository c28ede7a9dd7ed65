"""Output files written whole or not at all (the CLI's -o, --summary-json, --registry-csv, report pages)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str, data: bytes) -> None:
    """Write next to the target and rename: a failed run never leaves a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
