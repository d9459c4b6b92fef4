"""Catch-up: joining (SYNC), skipping ahead, resync by model fetch, and the future-round buffer.

- A starting node asks one live peer (MODEL_REQUEST) for its round and model; a reply from a later
  round is adopted, one from the same or an earlier round leaves the node's own (checkpointed) state;
  no reply within t_sync: it starts with its own model.
- A HELLO from more than ``rounds_ahead`` rounds ahead triggers a resync (MODEL_REQUEST to that peer).
  A node still in TRAIN that gets a HELLO for a later round from a proposed neighbour that never sent
  one for r skips to that round, keeping its model. Round numbers only go up.
- Messages for rounds r+1 .. r+rounds_ahead are buffered (at most ``max_buffered``) and replayed.
- With secure aggregation a MODEL_REPLY carries the round only: a model in the clear would undo masking.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action, AdoptModel, Log
from fednode.gossip.state import TRAIN, RoundState, SyncState
from fednode.security.arrays import Model
from fednode.security.envelope import Message, MsgType


class CatchUp:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.state = SyncState()

    # ------------------------------------------------------------------ joining and resync

    def begin(self, round_number: int, now: float, out: list[Action]) -> None:
        """A joining node: listen for the federation's round and model for up to t_sync."""
        self.state.deadline = now + self.ctx.config.t_sync
        self.state.target = None
        out.append(Log("info", "joining: asking a live peer for the federation's round and model"))
        self.ask_any(round_number, now, out)

    def ask_any(self, round_number: int, now: float, out: list[Action]) -> None:
        """Ask one live peer (deterministic pick per round) for its round and model."""
        if not self.ctx.members:
            return
        me = self.ctx.me
        ordered = sorted(self.ctx.members, key=lambda p: hashlib.sha256(me + p).digest())
        self.request(ordered[0], round_number, round_number, now, out)

    def request(self, peer: bytes, target: int, round_number: int, now: float, out: list[Action]) -> None:
        """MODEL_REQUEST to ``peer``; the driver is in SYNC until the reply or t_sync."""
        self.state.target = target
        self.state.deadline = now + self.ctx.config.t_sync
        out.append(Log("info", f"asking {peer.hex()[:12]} for its current model (round >= {target})"))
        self.ctx.outbox.post(out, MsgType.MODEL_REQUEST, peer, round_number, now, "model_request")

    def on_hello(self, msg: Message, round_number: int, now: float, out: list[Action]) -> None:
        """While syncing, a HELLO from a later round tells us whom to ask."""
        if self.state.target is None and msg.round > round_number:
            self.request(msg.sender, msg.round, round_number, now, out)

    def due(self, round_number: int, now: float, out: list[Action]) -> int | None:
        """The round to start when t_sync passed without a reply (own model), else None."""
        st = self.state
        if st.deadline is None or now < st.deadline:
            return None
        target = max(round_number, st.target or 0)
        out.append(Log("warning", f"no model reply; continuing from round {target} with the local model"))
        st.deadline = None
        st.target = None
        return target

    def serve(self, msg: Message, round_number: int, model: Model, now: float, out: list[Action]) -> None:
        """Answer a MODEL_REQUEST with x^r (also while syncing: simultaneous joiners must not wait on each
        other); with secure aggregation the reply carries the round only."""
        arrays = None if self.ctx.secure else model
        self.ctx.outbox.post(out, MsgType.MODEL_REPLY, msg.sender, round_number, now, "model_reply", arrays=arrays,
                             meta={"r": round_number})

    def on_reply(self, msg: Message, round_number: int, out: list[Action]) -> tuple[int, Model | None]:
        """The round to start, and the model to adopt (None: keep our own)."""
        self.state.deadline = None
        self.state.target = None
        if msg.round > round_number and not msg.arrays:  # secure aggregation: the round, no model
            out.append(Log("info", f"skipping to the federation's round {msg.round} with the local model "
                                   "(secure aggregation: models are never sent in the clear)"))
            self.ctx.stats.aborts["behind"] += 1
            return msg.round, None
        if msg.round > round_number:
            model = {k: np.array(v, copy=True) for k, v in msg.arrays.items()}
            out.append(AdoptModel(msg.round, model, msg.sender))
            return msg.round, model
        return round_number, None  # we are at least as far along: keep our own (checkpointed) model

    def should_jump(self, msg: Message, round_number: int, rnd: RoundState | None) -> bool:
        """A verified HELLO from ahead: jump when far ahead, or when we are stuck before contributing."""
        if msg.round - round_number > self.ctx.config.rounds_ahead:
            return True
        return (self.ctx.phase == TRAIN and rnd is not None and not rnd.exchange.contributions
                and msg.sender in rnd.proposed and msg.sender not in rnd.hello.received
                and msg.sender not in rnd.hello.implied)

    # ------------------------------------------------------------------ future-round buffer

    def buffer(self, msg: Message) -> None:
        buf = self.state.buffer
        buf.setdefault(msg.round, []).append(msg)
        total = sum(len(v) for v in buf.values())
        while total > self.ctx.config.max_buffered:
            newest = max(buf)
            buf[newest].pop(0)
            if not buf[newest]:
                del buf[newest]
            total -= 1

    def take(self, number: int) -> list[Message]:
        """Entering round ``number``: drop what is older, hand over what was kept for it."""
        buf = self.state.buffer
        for older in [r for r in buf if r < number]:
            del buf[older]
        return buf.pop(number, [])
