"""Signed node status: what a node publishes each round for dashboards, `fednode status` and tools.

The codec lives here, below both the node runtime (which seals) and the observers (``tui/``, the
CLI, which verify), so that a dashboard depends on what it shows and not on the runtime.

A status is a STATUS envelope (broadcast, no payload) whose signed ``meta`` map holds the
fields below. Observers verify it against the allow-list like any other message, so a
forged status is rejected and counted, never shown.

Fields (all optional for forward compatibility, types as listed):
    peer (str, 64 hex), short (str), state (str: training | aggregating | committing | syncing |
    idle | done), round (int), rounds_completed (int), accuracy (float), loss (float),
    neighbours (list[str] short ids), bytes_in / bytes_out (int), messages_in / messages_out (int),
    rejects (map str -> int), rejects_by_peer (map str 64 hex -> int, signed rejects by signer),
    aborts (map str -> int), exclusions (map str 64 hex -> int, times a peer was taken out of the
    overlay view for a proven fault), timings (map str -> float, last round),
    restarts (int), task (str), secure_aggregation (str), epsilon (float | None), time (float, unix s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from fednode.security.envelope import Message, MsgType, Reject, VerifyContext, open_envelope, seal
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import ReplayGuard

OBSERVER_ID = b"\x00" * 32


def seal_status(identity: Identity, federation: str, round: int, fields: Mapping[str, Any],
                now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    return seal(identity, msg_type=MsgType.STATUS, recipient=b"", federation=federation, round=round,
                meta=dict(fields), now_ms=int(now * 1000), nonce=os.urandom(16))


class StatusVerifier:
    """Verifies status envelopes for an observer that has no round of its own."""

    def __init__(self, federation: str, allow_list: AllowList) -> None:
        self.federation = federation
        self.allow_list = allow_list
        self.replay = ReplayGuard()

    def verify(self, data: bytes, now: float | None = None) -> Message | Reject:
        now = time.time() if now is None else now
        ctx = VerifyContext(self_id=OBSERVER_ID, federation=self.federation, allow_list=self.allow_list,
                            current_round=2**62, now_ms=int(now * 1000), replay=self.replay,
                            rounds_behind=2**62, rounds_ahead=0,
                            unbounded_future_types=frozenset({int(MsgType.STATUS)}),
                            broadcast_types=frozenset({int(MsgType.STATUS)}))
        result = open_envelope(data, ctx)
        if isinstance(result, Message) and result.msg_type != MsgType.STATUS:
            return Reject("not_status", sender=result.sender)
        return result
