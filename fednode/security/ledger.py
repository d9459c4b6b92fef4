"""The privacy ledger: a per-node, append-only, fsynced record of every noised release.

A node appends one record per release *before* the release (or anything derived from it) leaves
the node, and fsyncs it, so after any crash the ledger holds at least every release that happened.
Epsilon is always recomputed from the whole ledger, so a restart can never lower it.

File format: one JSON object per line, ``{"v": 1, "round": r, "mechanism": m, "noise_multiplier": z,
"sampling_rate": q, "steps": T, "time": t, "sha256": <hex of the canonical JSON of the other
fields>}``. JSON, not pickle: the file is readable and auditable with any tool.

Crash safety. A record is one ``write`` of one line followed by ``fsync``; a crash can only leave a
torn *last* line. A torn last line means the release was about to happen and may have: it is kept
as a release with the parameters of the previous record (or of the caller's mechanism), which can
only overstate epsilon. A bad line anywhere else is corruption and raises :class:`LedgerError`:
the node refuses to start rather than guess.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fednode.security.accountant import epsilon_of_releases

VERSION = 1
MECHANISMS = ("local", "dpsgd", "distributed")


class LedgerError(Exception):
    """The ledger is corrupt (not just a torn last line) or cannot be written."""


@dataclass(frozen=True)
class Release:
    """One noised release: ``steps`` compositions of a Gaussian (Poisson-subsampled when q < 1)."""

    round: int
    mechanism: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    time: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}")
        if not self.noise_multiplier > 0 or not 0 < self.sampling_rate <= 1 or self.steps < 1:
            raise ValueError("a release needs noise_multiplier > 0, 0 < sampling_rate <= 1 and steps >= 1")

    def event(self) -> tuple[float, float, int]:
        return (float(self.noise_multiplier), float(self.sampling_rate), int(self.steps))


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _encode(rel: Release) -> bytes:
    body = {"v": VERSION, **asdict(rel)}
    body["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    return _canonical(body) + b"\n"


def _decode(line: bytes) -> Release:
    body = json.loads(line)
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ValueError("not a version-1 ledger record")
    digest = body.pop("sha256", None)
    if digest != hashlib.sha256(_canonical(body)).hexdigest():
        raise ValueError("checksum mismatch")
    body.pop("v")
    return Release(**body)


class PrivacyLedger:
    """Load (and recover) a node's ledger; append releases durably; compute epsilon at ``delta``."""

    def __init__(self, path: Path | str, delta: float, *, fallback: Release | None = None) -> None:
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.path = Path(path)
        self.delta = float(delta)
        self.releases: list[Release] = []
        self.recovered_torn_record = False
        self._load(fallback)

    def _load(self, fallback: Release | None) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
        for i, line in enumerate(complete):
            try:
                self.releases.append(_decode(line))
            except (ValueError, TypeError) as exc:
                if i == len(complete) - 1 and not tail:
                    tail = line  # the last full line is bad: treat like a torn write
                    break
                raise LedgerError(f"{self.path}: record {i + 1} is corrupt ({exc}); refusing to guess "
                                  "the privacy spent") from None
        if tail:
            template = self.releases[-1] if self.releases else fallback
            if template is None:
                raise LedgerError(f"{self.path}: torn record and no mechanism to account it with")
            self.recovered_torn_record = True
            self.releases.append(Release(template.round + (1 if self.releases else 0), template.mechanism,
                                         template.noise_multiplier, template.sampling_rate, template.steps,
                                         template.time))
            self._rewrite()  # keep the conservative reading durable and the file well-formed

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            for rel in self.releases:
                fh.write(_encode(rel))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, rel: Release) -> None:
        """Write and fsync one record; only then may the release leave the node."""
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                line = _encode(rel)
                if os.write(fd, line) != len(line):
                    raise LedgerError(f"short write to {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                self._fsync_dir()
        except OSError as exc:
            raise LedgerError(f"cannot write the privacy ledger {self.path}: {exc.strerror}") from None
        self.releases.append(rel)

    def epsilon(self, extra: Release | None = None, accountant: str = "rdp") -> float:
        """Epsilon at ``delta`` of every recorded release (plus ``extra``, to test a budget)."""
        events = [r.event() for r in self.releases] + ([extra.event()] if extra is not None else [])
        return epsilon_of_releases(events, self.delta, accountant=accountant) if events else 0.0

    def would_exceed(self, budget: float, nxt: Release) -> bool:
        """True when releasing ``nxt`` would take epsilon above ``budget``."""
        return self.epsilon(nxt) > budget


__all__ = ["LedgerError", "MECHANISMS", "PrivacyLedger", "Release"]
