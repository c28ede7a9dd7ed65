"""What a write did, per patient and per run: counts taken from the server's answers, and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from .changes import Kept
from .errors import ServerError


@dataclass(slots=True)
class PatientWrite:
    """One patient's write, every count taken from the server's answers (or the read before the write)."""

    patient_key: str
    resources: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0  # same content hash on the server: not written again
    retracted: int = 0  # ours, no longer produced: entered-in-error (AdverseEvent: deleted)
    kept: list[Kept] = field(default_factory=list)  # changed by a clinician: never overwritten or retracted
    requests: int = 0  # transaction or batch Bundles posted (retries not counted; see round_trips)
    round_trips: int = 0
    conflicts: int = 0  # 412 on If-Match: another writer was first; re-read and re-planned
    complete: bool = True  # False: no Provenance of this run on the server (--verify)
    error: str | None = None
    duplicates: list[str] = field(default_factory=list)  # "Observation identifier sys|val: Observation/1, ..."

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def stale(self) -> bool:
        """--verify: something would be created, updated or retracted."""
        return bool(self.created or self.updated or self.retracted)

    def counts(self) -> str:
        return (f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.retracted} retracted, {len(self.kept)} kept as edited on the server")


@dataclass(slots=True)
class WriteReport:
    server: str
    mode: str = "transaction"
    patients: list[PatientWrite] = field(default_factory=list)
    round_trips: int = 0

    @property
    def failed(self) -> list[PatientWrite]:
        return [p for p in self.patients if not p.ok]

    def total(self, name: str) -> int:
        return sum(len(getattr(p, name)) if name == "kept" else getattr(p, name) for p in self.patients)

    def lines(self) -> list[str]:
        t = self.total
        out = [(f"write-back to {self.server}: {len(self.patients) - len(self.failed)} of {len(self.patients)} "
                f"patients written ({t('created')} created, {t('updated')} updated, {t('unchanged')} unchanged, "
                f"{t('retracted')} retracted, {t('kept')} kept as edited on the server, {len(self.failed)} failed) "
                f"in {self.round_trips} round trips, {self.mode} mode")]
        for p in self.patients:
            out.extend(f"warning: {p.patient_key}: {k.line()}" for k in p.kept)
        for p in self.failed:
            out.append(f"error: {p.patient_key}: not (completely) written: {p.error}")
            out.extend(f"error: {p.patient_key}: duplicate on the server: {d}" for d in p.duplicates)
        if self.failed:
            out.append("error: patients not (completely) written, re-run to repair: "
                       + ", ".join(p.patient_key for p in self.failed))
        return out


class WriteFailed(ServerError):
    """One patient's write stopped (the report says which); other patients go on."""


class Conflict(ServerError):
    """412 on an If-Match: another writer changed the resource since we read it; re-read and re-plan."""
