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

from dataclasses import dataclass
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
    """Simulation fast mode: same envelopes and checks, minus the signature and payload hash."""

    signed: bool = False

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        return seal(identity, signed=False, **fields)

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        return open_envelope(raw, ctx, signed=False)


SIGNED = SignedCodec()
UNSIGNED = UnsignedCodec()

__all__ = ["EnvelopeCodec", "SIGNED", "SignedCodec", "UNSIGNED", "UnsignedCodec"]
