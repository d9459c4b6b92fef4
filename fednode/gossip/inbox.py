"""Verify what arrives: the only place the round machine opens a peer's envelope (PROTOCOL §4).

Also home of the rejection counter and of the readers for the small ``meta`` fields (peer sets,
degrees) every stage checks: a message is either fully typed here or refused, never half-parsed.
"""

from __future__ import annotations

from fednode.gossip import secagg
from fednode.gossip.config import RoundConfig
from fednode.gossip.events import Action, Rejected
from fednode.gossip.exclusion import Exclusions
from fednode.gossip.state import NodeStats
from fednode.security.arrays import ModelSpec
from fednode.security.codec import SIGNED, EnvelopeCodec
from fednode.security.envelope import Message, MsgType, Reject, VerifyContext
from fednode.security.identity import AllowList
from fednode.security.replay import OffenderTracker, ReplayGuard


class Inbox:
    """Opens envelopes for one node: signature, admission, round window, replay, layout and bounds."""

    def __init__(self, me: bytes, allow_list: AllowList, config: RoundConfig, spec: ModelSpec,
                 stats: NodeStats, codec: EnvelopeCodec = SIGNED) -> None:
        self.me = me
        self.codec = codec
        self.allow_list = allow_list
        self.config = config
        self.spec = spec
        self.stats = stats
        self.replay = ReplayGuard(nonce_ttl_s=2 * config.timestamp_window_s)
        self.offenders = OffenderTracker()
        self.refused: dict[int, set[bytes]] = {}
        """Round -> peers whose signed contribution for it had bad content (non-finite, out of bounds,
        wrong layout): proof the peer is at fault, so the exchange stops waiting for and RETRYing it
        (PROTOCOL §4). Without this, every round with a wire-rejected attacker ran to its timeouts."""
        self.exclusions = Exclusions(config, stats)
        """Who stays out of the overlay view: the same proof as ``refused``, kept for longer."""
        self._contexts: dict[tuple[int, bool], VerifyContext] = {}

    def open(self, data: bytes, now: float, *, current_round: int, syncing: bool) -> Message | Reject:
        ctx = self._contexts.get((current_round, syncing))
        if ctx is None:
            if len(self._contexts) > 8:  # rounds only go up: old views are never asked again
                self._contexts.clear()
            ctx = self._contexts[(current_round, syncing)] = self._context(current_round, syncing)
        ctx.now_ms = int(now * 1000)
        return self.codec.open(data, ctx)

    def _context(self, current_round: int, syncing: bool) -> VerifyContext:
        """The receiver's view for one round (reused for its messages: only ``now_ms`` changes)."""
        future = {int(MsgType.HELLO)}
        past = {int(MsgType.MODEL_REQUEST)}
        if syncing:  # a syncing node takes a model reply from any round (it decides on its own)
            future.add(int(MsgType.MODEL_REPLY))
            past.add(int(MsgType.MODEL_REPLY))
        secure = {}
        if self.config.secure:  # masked '<u8' contributions only; a model reply carries the round, never a model
            secure = dict(payload_types=frozenset({int(MsgType.CONTRIBUTE)}),
                          allowed_payload_dtypes=frozenset({secagg.RING_DTYPE}))
        cfg = self.config
        return VerifyContext(
            **secure,
            self_id=self.me, federation=cfg.federation, allow_list=self.allow_list,
            current_round=current_round, now_ms=0, replay=self.replay, model_spec=self.spec,
            unbounded_future_types=frozenset(future), unbounded_past_types=frozenset(past),
            rounds_behind=cfg.rounds_behind, rounds_ahead=cfg.rounds_ahead,
            timestamp_window_ms=int(cfg.timestamp_window_s * 1000),
            max_message_bytes=cfg.max_message_bytes, max_abs=cfg.max_abs, offenders=self.offenders)

    def receive(self, out: list[Action], data: bytes, now: float, *, current_round: int,
                syncing: bool) -> Message | None:
        """Count the bytes, verify them; a rejection is counted and reported, and gives None."""
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(data)
        ctx = self._contexts.get((current_round, syncing))  # open(), inlined: once per message
        if ctx is None:
            result = self.open(data, now, current_round=current_round, syncing=syncing)
        else:
            ctx.now_ms = int(now * 1000)
            result = self.codec.open(data, ctx)
        if isinstance(result, Reject):
            self.reject(out, result)
            return None
        return result

    def reject(self, out: list[Action], rej: Reject) -> None:
        self.stats.rejects[rej.reason] += 1
        if rej.sender is not None:
            self.stats.rejects_by_peer[rej.sender] += 1
        out.append(Rejected(rej.reason, rej.sender, rej.detail))
        if rej.blames_sender and rej.round is not None:
            assert rej.sender is not None
            self.exclusions.proven(rej.sender, rej.round)
        if rej.blames_sender and rej.msg_type == MsgType.CONTRIBUTE and rej.round is not None:
            assert rej.sender is not None
            self.refused.setdefault(rej.round, set()).add(rej.sender)
            while len(self.refused) > 8:  # only the open rounds matter (the window is cur - 1 .. cur + 2)
                del self.refused[min(self.refused)]


def peer_degree(msg: Message) -> int | None:
    """The sender's announced degree ``d``, or None when absent or absurd."""
    d = msg.meta.get("d")
    return d if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1_000_000 else None


def peer_set(msg: Message, key: str) -> frozenset[bytes] | None:
    """A list of 32-byte peer ids under ``key``, or None when it is anything else."""
    value = msg.meta.get(key)
    if not isinstance(value, list):
        return None
    for v in value:  # a loop, not all(genexpr): two lists per COMMIT
        if not isinstance(v, bytes) or len(v) != 32:
            return None
    return frozenset(value)
