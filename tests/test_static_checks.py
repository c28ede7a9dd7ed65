"""The source tree passes ruff (line length, imports, bug patterns) and mypy (strict on the pure layers).

Both run here, so the README's test command (and CI, which runs it) enforces them. They read the source
tree beside the tests, with the settings in pyproject.toml; the tools come with the `test` extra. Outside
CI a missing tool skips with the reason; with CI set it fails, so nothing is skipped silently there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["adapter", "tests", "benchmarks", "profiles", "docs"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed: `pip install '.[test]'` brings it")
        pytest.skip(f"{name} is not installed (pip install '.[test]')")
    return found


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_passes() -> None:
    done = _run([_tool("ruff"), "check", "--no-cache", *SOURCES])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_passes() -> None:
    done = _run([_tool("mypy"), "--cache-dir", os.devnull])  # files and strictness: [tool.mypy] in pyproject
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
