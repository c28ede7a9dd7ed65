"""Build something the tests need into the user cache once, safely across concurrent pytest sessions, and run
the installers that build it with a time limit and a readable failure. Shared by the FHIR test server's npm
packages (fhir_server_fixture.py), axe-core (browser_fixture.py) and the HL7 R4 examples (r4_examples_fixture.py).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE = ".complete"  # written last into a finished folder: a folder without it is half-built


def install_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(work)` into a private temporary folder beside it and renamed into place only when
    complete; one builder at a time holds an exclusive lock (`<target>.lock`), the others then find it done."""
    if (target / COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return target
        work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
        try:
            build(work)
            (work / COMPLETE).write_text(target.name)
            if target.exists():  # a half-finished folder from an older, killed install
                shutil.rmtree(target)
            work.rename(target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target


def run_tool(cmd: list[str], cwd: Path, timeout_s: float, error: Callable[[str], Exception],
             what: str = "") -> subprocess.CompletedProcess[str]:
    """Run an installer; a timeout or a non-zero exit raises `error(message)` with the output's last lines."""
    shown = f"`{' '.join(cmd)}`{f' {what}' if what else ''}"
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{shown} took longer than {timeout_s:.0f} s (set CART_FHIR_NPM_TIMEOUT to allow more)") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-25:])
        raise error(f"{shown} failed (exit {done.returncode}):\n{tail}")
    return done
