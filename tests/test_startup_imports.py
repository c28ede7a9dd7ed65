"""Start-up (issue 18): a file run of `cart-fhir grade` imports no server, service, report or synth stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEAVY = ("requests", "fhirpy", "flask", "jsonschema", "aiohttp", "jwt", "cart_fhir.service",
         "cart_fhir.remote.connect", "cart_fhir.view.render",
         "pydantic_settings", "cart_fhir.remote.settings",  # server settings: only with --server (remote/defaults.py)
         "cart_fhir.synth.generate", "cart_fhir.synth.table",  # the generator: only for `synth` (synth/choices.py)
         "pydantic")  # settings models only: the tables are msgspec Structs (tables.py)


def test_file_run_imports_no_server_stack(tmp_path: Path) -> None:
    code = ("import sys\nfrom cart_fhir.cli import main\n"
            f"rc = main(['grade', {str(EXAMPLES)!r}, '-o', {str(tmp_path / 'out.json')!r}, '-q'])\n"
            f"print(rc, [m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "0"
    assert out.strip().endswith("[]"), out


def test_console_script_fast_exit_writes_everything(tmp_path: Path) -> None:
    """entry() ends a file run with os._exit: the output files and stdout are complete."""
    out = tmp_path / "out.json"
    code = "from cart_fhir.cli import entry\nentry()\n"
    r = subprocess.run([sys.executable, "-c", code, "grade", str(EXAMPLES), "-o", str(out), "--summary-json",
                        str(tmp_path / "s.json"), "-q"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().endswith(b"}\n") and (tmp_path / "s.json").read_bytes().endswith(b"\n")
    r = subprocess.run([sys.executable, "-c", code, "grade", str(EXAMPLES), "-q"], capture_output=True)
    assert r.returncode == 0 and r.stdout.rstrip().endswith(b"}") and len(r.stdout) > 1000
