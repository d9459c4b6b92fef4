"""Sign and send: the only place the round machine seals an envelope (PROTOCOL §4).

Every stage hands its message here; the byte and message counters of the node's status are kept
here too, so no stage can send without them counting. The envelope codec is
:data:`~fednode.security.codec.SIGNED` except in the simulator's fast mode
(:data:`~fednode.security.codec.LOCAL`, plaintext only).
"""

from __future__ import annotations

from collections.abc import Callable

from fednode.gossip.config import RoundConfig
from fednode.gossip.events import Action, Send
from fednode.gossip.state import NodeStats
from fednode.security.arrays import Model, ModelSpec
from fednode.security.codec import SIGNED, EnvelopeCodec
from fednode.security.envelope import MsgType
from fednode.security.identity import Identity


class Outbox:
    """Seals messages with the node's identity for one federation and appends :class:`Send` actions."""

    def __init__(self, identity: Identity, config: RoundConfig, spec: ModelSpec, stats: NodeStats,
                 nonce: Callable[[int], bytes], codec: EnvelopeCodec = SIGNED) -> None:
        self.identity = identity
        self.codec = codec
        self.config = config
        self.spec = spec
        self.stats = stats
        self._nonce = nonce

    def seal(self, msg_type: MsgType, recipient: bytes, round: int, now: float, *, attempt: int = 0,
             arrays: Model | None = None, spec: ModelSpec | None = None, meta: dict | None = None) -> bytes:
        """The signed envelope; ``spec`` defaults to the model spec (masked payloads pass the ring spec)."""
        layout = (spec or self.spec) if arrays is not None else None
        return self.codec.seal(self.identity, msg_type=msg_type, recipient=recipient,
                               federation=self.config.federation, round=round, attempt=attempt, arrays=arrays,
                               spec=layout, meta=meta or {}, now_ms=int(now * 1000), nonce=self._nonce(16))

    def send(self, out: list[Action], peer: bytes, data: bytes, kind: str) -> None:
        self.stats.messages_out += 1
        self.stats.bytes_out += len(data)
        out.append(Send(peer, data, kind))

    def post(self, out: list[Action], msg_type: MsgType, peer: bytes, round: int, now: float, kind: str, *,
             attempt: int = 0, arrays: Model | None = None, spec: ModelSpec | None = None,
             meta: dict | None = None) -> None:
        """Seal and send in one call (what nearly every stage does); :meth:`seal` and :meth:`send`, inlined."""
        data = self.codec.seal(self.identity, msg_type=msg_type, recipient=peer, federation=self.config.federation,
                               round=round, attempt=attempt, arrays=arrays,
                               spec=(spec or self.spec) if arrays is not None else None, meta=meta or {},
                               now_ms=int(now * 1000), nonce=self._nonce(16))
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += len(data)
        out.append(Send(peer, data, kind))
