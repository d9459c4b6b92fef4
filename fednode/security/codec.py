"""Envelope codecs: how the round machine seals what it sends and opens what it receives.

:data:`SIGNED` (the default everywhere) is :func:`~fednode.security.envelope.seal` and
:func:`~fednode.security.envelope.open_envelope`: Ed25519 over the header, SHA-256 binding the
payload. :data:`UNSIGNED` is the simulator's fast mode: the same envelope (same msgpack
structure, header fields, layout and meta) with a zero signature and a zero payload hash, opened
with every other check of the verifier in the same order (size, structure, allow-list, ban,
version, federation, recipient, round window, timestamp, replay/duplicate, payload layout,
finiteness, norm, magnitude). It exists because at 1,000 simulated nodes Ed25519 and hashing
40-80 KB payloads are most of the run time while they exercise nothing the signed unit tests do
not (see benchmarks/bench_simulator.py). A signed receiver rejects every unsigned envelope
(bad_signature): never use it outside a simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fednode.security.envelope import Message, Reject, VerifyContext, open_envelope, seal
from fednode.security.identity import Identity


class EnvelopeCodec(Protocol):
    signed: bool
    """False only for the unauthenticated simulation codec."""

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        """Build an envelope; ``fields`` are :func:`~fednode.security.envelope.seal`'s keywords."""

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        """Check ``raw`` against ``ctx`` (never raises)."""


@dataclass(frozen=True)
class SignedCodec:
    """Real envelopes: Ed25519 signature and SHA-256 payload hash, both checked."""

    signed: bool = True

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        return seal(identity, **fields)

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        return open_envelope(raw, ctx)


@dataclass(frozen=True)
class UnsignedCodec:
    """Simulation fast mode: same envelopes and checks, minus the signature and payload hash.

    Sender and receivers live in one process, so the header the sealer already parsed (its
    check that it emits nothing malformed) is handed to the receiver through a bounded cache
    instead of being parsed a second time; a duplicate or unknown header is parsed as usual.
    """

    signed: bool = False
    max_cached_headers: int = 1 << 18
    _headers: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        if len(self._headers) > self.max_cached_headers:  # lost messages are never opened
            self._headers.clear()
        return seal(identity, signed=False, header_cache=self._headers, **fields)

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        return open_envelope(raw, ctx, signed=False, header_cache=self._headers)


SIGNED = SignedCodec()
UNSIGNED = UnsignedCodec()
"""Shared by every machine of a fast-mode simulation (its header cache is per process)."""

__all__ = ["EnvelopeCodec", "SIGNED", "SignedCodec", "UNSIGNED", "UnsignedCodec"]
