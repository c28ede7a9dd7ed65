"""Output files written whole or not at all (the CLI's -o, --summary-json, --registry-csv, report pages):
targets checked before any grading, every file staged beside its target, then all renamed together."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def check_targets(paths: list[str | None]) -> None:
    """Refuse output paths that cannot be written before any grading: an existing folder, a path under a
    file, a folder that cannot be created or written (one `cart-fhir: error:` line, exit 2)."""
    for path in paths:
        if path is None:
            continue
        target = Path(path)
        if target.is_dir():
            raise ConfigError(f"{path}: is a folder, not an output file")
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{path}: cannot write: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: cannot write: no permission to write in {parent}")


def write_all(files: list[tuple[str, bytes]]) -> None:
    """Write every output next to its target, then rename them all: a failure (full disk, a path that
    cannot be written) leaves no output file and no temporary file behind, and existing outputs untouched."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            target = Path(path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
                staged.append((tmp, target))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
            except OSError as exc:
                raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        for tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise ConfigError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str, data: bytes) -> None:
    """Write next to the target and rename: a failed run never leaves a half-written file."""
    write_all([(path, data)])
