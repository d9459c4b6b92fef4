"""The gossip round of PROTOCOL §1 as a sans-I/O state machine.

One :class:`GossipNode` per peer. Events go in through :meth:`GossipNode.handle`
(bytes received, peer joined or left, timer, local step finished); actions come out
(send, broadcast, set timer, start local step, commit, abort). Nothing here does I/O
or reads a clock, so every path runs in tests and in the deterministic simulator.

Round r at node i::

    TRAIN      HELLO(r, N_i, d_i) to each j in N_i; StartLocalStep(x^r)   (both at once)
               wait for the local step, and for HELLOs of N_i or t_hello
               edges E_i = {j in N_i : j's HELLO lists i}            (symmetric)
    AGGREGATE  CONTRIBUTE x^{r+1/2} to every j in E_i
               wait t_agg for contributions; RETRY the missing ones up to A_max times
               U_i = received (minus rejected); |U_i| < u_min -> U_i = {} (abort)
    COMMIT     send COMMIT(U_i) to every j in E_i; wait t_commit for COMMIT_j, j in U_i
               F_i = {j in U_i : i in U_j}                            (mutual use only)
               x^{r+1} = (1 - sum_F W_ij) x^{r+1/2} + sum_F W_ij x_j^{r+1/2}

The COMMIT exchange makes usage symmetric (j in F_i <=> i in F_j) whenever COMMITs
arrive, which is what keeps W doubly stochastic and the federation's mean exact.
Any round message from j (CONTRIBUTE, RETRY) carries j's degree and, being sent only
to proposed neighbours, implies j lists i: a lost HELLO costs nothing.

A node with no usable neighbour self-loops (W_ii = 1) and keeps training. A node that
sees a HELLO from more than ``rounds_ahead`` rounds ahead fetches that peer's model
(MODEL_REQUEST / MODEL_REPLY) and jumps to its round: the round counter never goes
backwards and a late joiner does not start from scratch.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from fednode.aggregation import adaptive_tau, clipped_gossip, coordinate_median, mh_weight, mix, trimmed_mean
from fednode.gossip.config import RoundConfig
from fednode.gossip.events import (Abort, Action, AdoptModel, Commit, Event, Finished, LocalStepDone, Log,
                                   MessageReceived, PeerJoined, PeerLeft, Rejected, RoundStats, Send, SetTimer,
                                   StartLocalStep, TimerFired)
from fednode.gossip import secagg
from fednode.gossip.overlay import Overlay, RandomRegularOverlay
from fednode.security.arrays import Model, ModelSpec
from fednode.security.clipping import clip_by_global_norm, l2_norm
from fednode.security.codec import SIGNED, EnvelopeCodec
from fednode.security.envelope import Message, MsgType, Reject, VerifyContext, seal
from fednode.security.identity import AllowList, Identity
from fednode.security.kdf import EpochKeys, KeyAgreementError
from fednode.security.aead import BundleDecryptionError, open_bundle, seal_bundle
from fednode.security.kdf import mask_seed
from fednode.security.noise import add_gaussian, distributed_sigma, make_rng
from fednode.security.masking import (TooFewContributorsError, apply_prg_terms, derive_mask_seeds, mask_partners,
                                      mask_sign)
from fednode.security.shamir import ShamirError
from fednode.security.shamir import threshold as shamir_threshold
from fednode.security.replay import OffenderTracker, ReplayGuard
from fednode.security.ring import RingEncodingError, decode

TRAIN, AGGREGATE, COMMITTING, SYNC, DONE = "train", "aggregate", "commit", "sync", "done"


@dataclass
class NodeStats:
    """Counters for status messages and the dashboard."""

    rounds_completed: int = 0
    rounds_aborted: int = 0
    rounds_averaged: int = 0
    retries_sent: int = 0
    resyncs: int = 0
    drift_events: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejects: Counter = field(default_factory=Counter)
    aborts: Counter = field(default_factory=Counter)
    masked_contributions: int = 0
    """Secure aggregation: masked contributions this node sent (as contributor)."""
    setups_refused: Counter = field(default_factory=Counter)
    """Secure aggregation: SETUP/RETRY requests this node refused, by reason."""


@dataclass
class _Round:
    """Everything node i knows about one round; dropped two rounds later."""

    number: int
    started: float
    base: Model                                   # x^r
    proposed: frozenset[bytes]                    # N_i
    hello_deadline: float
    step_round: int                               # LocalStepDone.round we accept as this round's step
    hellos: dict[bytes, tuple[frozenset[bytes], int]] = field(default_factory=dict)
    implied: dict[bytes, int] = field(default_factory=dict)   # peers that listed us implicitly -> degree
    half: Model | None = None                     # x^{r+1/2}
    step_done_at: float | None = None
    edges: dict[bytes, float] = field(default_factory=dict)   # j -> W_ij
    contributed_at: float | None = None
    attempt: int = 0
    agg_deadline: float | None = None
    contributions: dict[bytes, Model] = field(default_factory=dict)
    gone: set[bytes] = field(default_factory=set)
    used: frozenset[bytes] | None = None          # U_i, fixed when aggregation ends
    aggregated_at: float | None = None
    commit_deadline: float | None = None
    commits: dict[bytes, frozenset[bytes]] = field(default_factory=dict)
    commit_sends: Counter = field(default_factory=Counter)
    commit_nudge_at: float = float("inf")
    hello_resent: bool = False
    # --- secure aggregation, aggregator side (this node sums its neighbours' masked values)
    epoch_keys: dict[bytes, EpochKeys] = field(default_factory=dict)   # recipient -> our X25519 key for it
    hello_epk: dict[bytes, bytes] = field(default_factory=dict)       # sender -> its key for us
    sa_set: frozenset[bytes] = frozenset()                           # U of the current attempt
    sa_unmask_sent: bool = False
    sa_reveal_deadline: float | None = None
    sa_reveals: dict[bytes, bytes] = field(default_factory=dict)
    sa_sum: np.ndarray | None = None
    sa_abort: str | None = None
    sa_digest: str = ""
    # --- secure aggregation, contributor side (this node masks for its neighbours)
    sa_answered: dict[bytes, tuple[int, frozenset[bytes]]] = field(default_factory=dict)  # aggregator -> (a, U)
    sa_self_masks: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    sa_revealed: dict[bytes, int] = field(default_factory=dict)
    sa_pending: dict[bytes, Message] = field(default_factory=dict)   # SETUPs that came before our local step
    # --- mode B (SecAgg+)
    enc_keys: dict[bytes, EpochKeys] = field(default_factory=dict)     # recipient -> our share-encryption key
    hello_cpk: dict[bytes, bytes] = field(default_factory=dict)
    sb_phase: str = "shares"                                         # aggregator: shares -> contrib -> unmask
    sb_bundles: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)   # sender -> holder -> sealed
    sb_u1: frozenset[bytes] = frozenset()
    sb_threshold: int = 0                                            # t for the |U| the shares were cut for
    sb_reveals: dict[bytes, tuple[dict, dict]] = field(default_factory=dict)  # holder -> (b-shares, key-shares)
    sb_own: dict[bytes, dict] = field(default_factory=dict)          # contributor: aggregator -> our secrets
    sb_held: dict[bytes, dict[bytes, tuple]] = field(default_factory=dict)   # aggregator -> sender -> shares

    @property
    def degree(self) -> int:
        return len(self.proposed)


class GossipNode:
    """One peer's round logic. Feed :meth:`start` once, then every event to :meth:`handle`."""

    def __init__(self, identity: Identity, allow_list: AllowList, spec: ModelSpec, model: Model,
                 config: RoundConfig, *, overlay: Overlay | None = None, start_round: int = 0,
                 members: Iterable[bytes] = (), nonce_source: Callable[[int], bytes] = os.urandom,
                 joining: bool = False, codec: EnvelopeCodec = SIGNED) -> None:
        if not spec.matches(model):
            raise ValueError("initial model does not match the model spec")
        if not codec.signed and config.secure:  # relayed HELLOs are verified by third parties: keys need signatures
            raise ValueError("unsigned envelopes (simulator fast mode) cannot run secure aggregation")
        self.codec = codec
        self.identity = identity
        self.me = identity.peer_id
        self.allow_list = allow_list
        self.spec = spec
        self.config = config
        self.overlay: Overlay = overlay or RandomRegularOverlay(config.federation, config.degree)
        self.round_number = int(start_round)
        self.model: Model = {k: np.array(v, copy=True) for k, v in model.items()}
        self.members: set[bytes] = {m for m in members if m != self.me and m in allow_list}
        self.stats = NodeStats()
        self.phase = SYNC if joining else TRAIN
        self._nonce = nonce_source
        self._replay = ReplayGuard(nonce_ttl_s=2 * config.timestamp_window_s)
        self._offenders = OffenderTracker()
        self._cur: _Round | None = None
        self._prev: _Round | None = None
        self._buffer: dict[int, list[Message]] = {}
        self._sync_deadline: float | None = None
        self._sync_target: int | None = None
        self._timer: float | None = None
        self._secure = config.secure
        self._dp_rng = make_rng() if config.dp_distributed is not None else None
        self._plus = config.secure_aggregation == "secagg+"
        self._ring_spec = spec.with_dtype(secagg.RING_DTYPE)
        self._hello_raw: dict[tuple[int, bytes], bytes] = {}   # (round, sender) -> signed HELLO bytes (to relay)
        self._relayed_ok: dict[bytes, secagg.RelayedKey] = {}   # sha256(raw) -> verified key (cache)
        self._started = False
        self._now = float("-inf")
        self.contribution_filter: Callable[[Model, dict[bytes, Model], dict[bytes, float]], dict[bytes, float]] | None = None
        """Validation-score filter, injected by the runtime when ``config.validation_filter`` (plaintext only):
        (own x^{r+1/2}, neighbours' models, W_ij) -> the weights to mix with (dropped peers absent)."""

    # ------------------------------------------------------------------ public API

    @property
    def round(self) -> int:
        return self.round_number

    def start(self, now: float) -> list[Action]:
        """Begin: a joining node first listens for the federation's round (t_hello), others start round r."""
        if self._started:
            return []
        self._started = True
        self._now = now
        out: list[Action] = []
        if self.phase == SYNC:
            self._sync_deadline = now + self.config.t_sync
            self._sync_target = None
            out.append(Log("info", "joining: asking a live peer for the federation's round and model"))
            self._sync_request(now, out)
        else:
            self._begin_round(self.round_number, now, out)
        self._advance(now, out)
        return self._finish(out)

    def handle(self, event: Event) -> list[Action]:
        out: list[Action] = []
        now = event.now
        self._now = max(self._now, now)
        if isinstance(event, MessageReceived):
            self._on_bytes(event.data, now, out)
        elif isinstance(event, PeerJoined):
            if event.peer != self.me and event.peer in self.allow_list:
                self.members.add(event.peer)
                if self.phase == SYNC and self._started and self._sync_target is None:
                    self._sync_request(now, out)
        elif isinstance(event, PeerLeft):
            self.members.discard(event.peer)
            for rnd in (self._cur, self._prev):
                if rnd is not None:
                    rnd.gone.add(event.peer)
        elif isinstance(event, LocalStepDone):
            self._on_local_step(event, out)
        elif isinstance(event, TimerFired):
            pass
        else:  # pragma: no cover - typing guard
            raise TypeError(f"unknown event {event!r}")
        if self._started:
            self._advance(now, out)
        return self._finish(out)

    def next_deadline(self) -> float | None:
        """The earliest time the machine wants a :class:`TimerFired` (None: only events matter)."""
        return self._deadline()

    # ------------------------------------------------------------------ sending

    def _seal(self, msg_type: MsgType, recipient: bytes, round: int, now: float, *, attempt: int = 0,
              arrays: Model | None = None, meta: dict | None = None) -> bytes:
        return self.codec.seal(self.identity, msg_type=msg_type, recipient=recipient,
                               federation=self.config.federation, round=round, attempt=attempt, arrays=arrays,
                               spec=self.spec if arrays is not None else None, meta=meta or {},
                               now_ms=int(now * 1000), nonce=self._nonce(16))

    def _send(self, out: list[Action], peer: bytes, data: bytes, kind: str) -> None:
        self.stats.messages_out += 1
        self.stats.bytes_out += len(data)
        out.append(Send(peer, data, kind))

    def _send_hellos(self, rnd: _Round, now: float, out: list[Action], attempt: int = 0,
                     only: Iterable[bytes] | None = None) -> None:
        """HELLO goes to each proposed neighbour, recipient-bound: O(degree) messages, not O(n)."""
        targets = sorted(rnd.proposed if only is None else only)
        for peer in targets:
            meta = {"n": sorted(rnd.proposed), "d": rnd.degree, "epk": b""}
            if self._secure:  # a fresh X25519 key per (round, aggregator): a revealed one exposes nothing else
                meta["epk"] = rnd.epoch_keys.setdefault(peer, EpochKeys.generate()).public_bytes
            if self._plus:  # and a separate one for share bundles, which is never secret-shared
                meta["cpk"] = rnd.enc_keys.setdefault(peer, EpochKeys.generate()).public_bytes
            data = self._seal(MsgType.HELLO, peer, rnd.number, now, attempt=attempt, meta=meta)
            self._send(out, peer, data, "hello")

    def _send_contribution(self, rnd: _Round, peer: bytes, now: float, out: list[Action], attempt: int = 0) -> None:
        assert rnd.half is not None
        data = self._seal(MsgType.CONTRIBUTE, peer, rnd.number, now, attempt=attempt, arrays=rnd.half,
                          meta={"d": rnd.degree})
        self._send(out, peer, data, "contribute")

    def _send_commit(self, rnd: _Round, peer: bytes, now: float, out: list[Action]) -> None:
        """COMMIT(U_i) to ``peer``; ``w`` lists the peers whose COMMIT we still await (they re-send theirs)."""
        assert rnd.used is not None
        attempt = rnd.commit_sends[peer]
        if attempt > self.config.max_retries + 4:
            return
        rnd.commit_sends[peer] += 1
        waiting = sorted(rnd.used - set(rnd.commits) - rnd.gone) if rnd is self._cur else []
        data = self._seal(MsgType.COMMIT, peer, rnd.number, now, attempt=attempt,
                          meta={"u": sorted(rnd.used), "d": rnd.degree, "w": waiting})
        self._send(out, peer, data, "commit")

    # ------------------------------------------------------------------ round lifecycle

    def _begin_round(self, number: int, now: float, out: list[Action], *, step_round: int | None = None,
                     half: Model | None = None) -> None:
        if self.config.max_rounds is not None and number >= self.config.max_rounds:
            self.phase = DONE
            self.round_number = number
            out.append(Finished(number))
            return
        self._prev = self._cur
        self.round_number = number
        proposed = self.overlay.neighbours(self.me, self.members, number)
        rnd = _Round(number=number, started=now, base=self.model, proposed=frozenset(proposed),
                     hello_deadline=now + self.config.t_hello,
                     step_round=number if step_round is None else step_round)
        self._cur = rnd
        self.phase = TRAIN
        self._send_hellos(rnd, now, out)
        if half is not None:
            rnd.half = half
            rnd.step_done_at = now
        elif step_round is None:
            out.append(StartLocalStep(number, self.model))
        # messages that arrived early for this round
        for older in [r for r in self._buffer if r < number]:
            del self._buffer[older]
        for key in [k for k in self._hello_raw if k[0] < number - 1]:
            del self._hello_raw[key]
        if len(self._relayed_ok) > 4096:
            self._relayed_ok.clear()
        for msg in self._buffer.pop(number, []):
            self._dispatch(msg, now, out)

    def _end_round(self, rnd: _Round, now: float, out: list[Action], *, model: Model, used: dict[bytes, float],
                   abort_reason: str | None, drift: tuple[bytes, ...] = (), secure_sum_digest: str = "") -> None:
        contributed = rnd.contributed_at or now
        step_done = rnd.step_done_at or now
        stats = RoundStats(
            round=rnd.number, started=rnd.started,
            local_step_s=max(0.0, step_done - rnd.started),
            hello_wait_s=max(0.0, contributed - step_done),
            aggregate_s=max(0.0, (rnd.aggregated_at or now) - contributed),
            commit_s=max(0.0, now - (rnd.aggregated_at or now)),
            total_s=max(0.0, now - rnd.started),
            neighbours=tuple(sorted(rnd.edges)), attempts=rnd.attempt + 1,
            contributions=len(rnd.contributions))
        self.model = model
        self.stats.rounds_completed += 1
        if abort_reason is not None:
            self.stats.rounds_aborted += 1
            self.stats.aborts[abort_reason] += 1
            out.append(Abort(rnd.number, model, abort_reason, stats))
        else:
            self.stats.rounds_averaged += 1
            self_weight = 1.0 - sum(used.values())
            out.append(Commit(rnd.number, model, tuple(sorted(used)), dict(used), self_weight, stats, drift,
                              secure_sum_digest))
        if drift:
            self.stats.drift_events += len(drift)
        self._begin_round(rnd.number + 1, now, out)

    def _on_local_step(self, event: LocalStepDone, out: list[Action]) -> None:
        rnd = self._cur
        if rnd is None or self.phase != TRAIN or event.round != rnd.step_round or rnd.half is not None:
            return  # a step for a round we left (resync) or a duplicate
        half = event.model
        reason = None
        if not self.spec.matches(half):
            reason = "bad_local_step_layout"
        elif not all(np.isfinite(v).all() for v in half.values()):
            reason = "bad_local_step_non_finite"
        if reason is not None:
            out.append(Log("error", f"local step of round {rnd.number} rejected: {reason}; keeping x^r"))
            rnd.step_done_at = event.now
            self._end_round(rnd, event.now, out, model=rnd.base, used={}, abort_reason=reason)
            return
        half = {k: np.array(v, copy=True) for k, v in half.items()}
        if self.config.update_clip is not None:
            delta = {k: half[k].astype(np.float64) - rnd.base[k].astype(np.float64) for k in half}
            clipped, _norm = clip_by_global_norm(delta, self.config.update_clip)
            half = {k: (rnd.base[k].astype(np.float64) + clipped[k]).astype(half[k].dtype) for k in half}
        rnd.half = half
        rnd.step_done_at = event.now
        if self._secure:
            pending, rnd.sa_pending = rnd.sa_pending, {}
            for msg in pending.values():
                self._answer_setup(rnd, msg, event.now, out)

    # ------------------------------------------------------------------ progress

    def _advance(self, now: float, out: list[Action]) -> None:
        """Move the current round forward as far as the known facts allow."""
        for _ in range(8):  # a handful of phase transitions per event at most
            before = (self.phase, self.round_number)
            if self.phase == SYNC:
                self._advance_sync(now, out)
            elif self.phase == TRAIN:
                self._advance_train(now, out)
            elif self.phase == AGGREGATE:
                self._advance_aggregate(now, out)
            elif self.phase == COMMITTING:
                self._advance_commit(now, out)
            if (self.phase, self.round_number) == before or self.phase == DONE:
                return

    def _advance_sync(self, now: float, out: list[Action]) -> None:
        if self._sync_deadline is not None and now >= self._sync_deadline:
            target = max(self.round_number, self._sync_target or 0)
            out.append(Log("warning", f"no model reply; continuing from round {target} with the local model"))
            self._sync_deadline = None
            self._sync_target = None
            self._begin_round(target, now, out)

    def _edge_candidates(self, rnd: _Round) -> dict[bytes, int]:
        """Peers that list us (HELLO or implied) and that we list -> their degree."""
        out: dict[bytes, int] = {}
        for peer, (their_n, their_d) in rnd.hellos.items():
            if self.me in their_n and peer in rnd.proposed:
                out[peer] = their_d
        for peer, their_d in rnd.implied.items():
            if peer in rnd.proposed and peer not in out:
                out[peer] = their_d
        return {p: d for p, d in out.items() if p not in rnd.gone}

    def _advance_train(self, now: float, out: list[Action]) -> None:
        rnd = self._cur
        assert rnd is not None
        waiting = rnd.proposed - set(rnd.hellos) - set(rnd.implied) - rnd.gone
        if waiting and not rnd.hello_resent and now >= rnd.started + self.config.t_hello / 2:
            rnd.hello_resent = True  # one re-broadcast against loss
            self._send_hellos(rnd, now, out, attempt=1, only=waiting)
        if rnd.half is None:
            return
        if waiting and now < rnd.hello_deadline:
            return
        candidates = self._edge_candidates(rnd)
        if self._secure:  # masking needs each contributor's signed key for us: explicit HELLOs only
            candidates = {p: d for p, d in candidates.items() if p in rnd.hello_epk and p in rnd.hellos}
        if not candidates:
            reason = "alone" if not rnd.proposed else "no_neighbours"
            self._end_round(rnd, now, out, model=rnd.half, used={}, abort_reason=reason)
            return
        rnd.edges = {p: mh_weight(rnd.degree, d) for p, d in candidates.items()}
        rnd.contributed_at = now
        if self._secure:
            self._secure_start(rnd, now, out)
            return
        for peer in sorted(rnd.edges):
            self._send_contribution(rnd, peer, now, out)
        rnd.agg_deadline = now + self.config.t_agg
        self.phase = AGGREGATE

    def _advance_aggregate(self, now: float, out: list[Action]) -> None:
        rnd = self._cur
        assert rnd is not None and rnd.agg_deadline is not None
        if self._secure:
            self._secure_advance(rnd, now, out)
            return
        excluded_us = {p for p, u in rnd.commits.items() if self.me not in u}
        missing = set(rnd.edges) - set(rnd.contributions) - rnd.gone - excluded_us
        if missing and now < rnd.agg_deadline:
            return
        if missing and rnd.attempt < self.config.max_retries:
            rnd.attempt += 1
            rnd.agg_deadline = now + self.config.t_agg
            survivors = sorted(set(rnd.edges) - rnd.gone)
            for peer in sorted(missing):
                data = self._seal(MsgType.RETRY, peer, rnd.number, now, attempt=rnd.attempt,
                                  meta={"u": survivors, "d": rnd.degree})
                self._send(out, peer, data, "retry")
                self.stats.retries_sent += 1
            return
        # aggregation ends: fix U_i
        used = set(rnd.contributions) & set(rnd.edges)
        if self.config.max_distance is not None and rnd.half is not None:
            for peer in sorted(used):
                diff = {k: rnd.contributions[peer][k].astype(np.float64) - rnd.half[k].astype(np.float64)
                        for k in rnd.half}
                if l2_norm(diff) > self.config.max_distance:
                    used.discard(peer)
                    self._reject(out, Reject("distance", sender=peer))
        if len(used) < self.config.min_contributors:
            used = set()
        self._enter_commit(rnd, frozenset(used), now, out)

    def _enter_commit(self, rnd: _Round, used: frozenset[bytes], now: float, out: list[Action]) -> None:
        """Fix U_i and tell every edge whom we used (COMMIT); then wait for theirs."""
        rnd.used = used
        rnd.aggregated_at = now
        rnd.commit_deadline = now + self.config.t_commit
        rnd.commit_nudge_at = now + self.config.t_commit / 3
        for peer in sorted(rnd.edges):
            if peer not in rnd.gone:
                self._send_commit(rnd, peer, now, out)
        self.phase = COMMITTING

    def _advance_commit(self, now: float, out: list[Action]) -> None:
        rnd = self._cur
        assert rnd is not None and rnd.used is not None and rnd.commit_deadline is not None
        if not rnd.used:
            self._end_round(rnd, now, out, model=rnd.half, used={},
                            abort_reason=rnd.sa_abort or "too_few_contributions")
            return
        waiting = rnd.used - set(rnd.commits) - rnd.gone
        if waiting and now < rnd.commit_deadline:
            if now >= rnd.commit_nudge_at:
                # our COMMIT or theirs may be lost: re-send ours, asking for theirs
                rnd.commit_nudge_at = now + self.config.t_commit / 3
                for peer in sorted(waiting):
                    self._send_commit(rnd, peer, now, out)
            return
        if self._secure:
            self._secure_finish(rnd, now, out)
            return
        final = {p for p in rnd.used if p in rnd.commits and self.me in rnd.commits[p]}
        drift = tuple(sorted(p for p in rnd.used if p not in rnd.commits))
        if len(final) < self.config.min_contributors:
            final = set()
        if not final:
            self._end_round(rnd, now, out, model=rnd.half, used={}, abort_reason="no_mutual_use", drift=drift)
            return
        weights = {p: rnd.edges[p] for p in sorted(final)}
        model = self._aggregate(rnd.half, {p: rnd.contributions[p] for p in weights}, weights)
        self._end_round(rnd, now, out, model=model, used=weights, abort_reason=None, drift=drift)

    def _aggregate(self, own: Model, neighbours: dict[bytes, Model], weights: dict[bytes, float]) -> Model:
        cfg = self.config
        tau = cfg.clip_tau
        if tau is None and cfg.aggregator == "clipped":  # the radius comes from the whole neighbourhood
            tau = adaptive_tau(own, neighbours, weights)
        if self.contribution_filter is not None and not self._secure:
            weights = self.contribution_filter(own, neighbours, weights)
            neighbours = {p: neighbours[p] for p in weights}
        if cfg.aggregator == "gossip":
            return mix(own, neighbours, weights)
        if cfg.aggregator == "clipped":
            return clipped_gossip(own, neighbours, weights, tau)
        models = [own, *neighbours.values()]
        if cfg.aggregator == "median":
            return coordinate_median(models)
        trim = min(cfg.trim, (len(models) - 1) // 2)
        return trimmed_mean(models, trim)

    # ------------------------------------------------------------------ secure aggregation (docs/security.md)

    def _send_setup(self, rnd: _Round, now: float, out: list[Action]) -> None:
        """SETUP (attempt 0) or RETRY (attempt > 0) to every contributor of the attempt's set U."""
        members = sorted(rnd.sa_set)
        relayed = [self._hello_raw[(rnd.number, p)] for p in members if (rnd.number, p) in self._hello_raw]
        msg_type = MsgType.SETUP if rnd.attempt == 0 else MsgType.RETRY
        for peer in members:
            data = self._seal(msg_type, peer, rnd.number, now, attempt=rnd.attempt,
                              meta={"u": members, "n": sorted(rnd.proposed), "d": rnd.degree, "h": relayed})
            self._send(out, peer, data, "setup" if rnd.attempt == 0 else "retry")
            if rnd.attempt:
                self.stats.retries_sent += 1

    def _secure_start(self, rnd: _Round, now: float, out: list[Action]) -> None:
        """Aggregator: fix U = edges for attempt 0; below u_min keep the own model (never plaintext)."""
        rnd.agg_deadline = now + self.config.t_agg
        self.phase = AGGREGATE
        rnd.sa_set = frozenset(p for p in rnd.edges if (rnd.number, p) in self._hello_raw)
        if len(rnd.sa_set) < self.config.u_min:
            self._secure_conclude(rnd, now, out, abort="neighbourhood_below_u_min")
            return
        if self._plus:
            rnd.sb_threshold = shamir_threshold(len(rnd.sa_set))
        self._send_setup(rnd, now, out)

    def _secure_advance(self, rnd: _Round, now: float, out: list[Action]) -> None:
        assert rnd.agg_deadline is not None
        if self._plus:
            self._plus_advance(rnd, now, out)
            return
        if not rnd.sa_unmask_sent:
            missing = rnd.sa_set - set(rnd.contributions)
            gone = missing & rnd.gone
            if missing - gone and now < rnd.agg_deadline:
                return
            if missing:  # mode A: the attempt is dangling; never unmask it, re-mask over the survivors
                self._secure_retry(rnd, missing, now, out, "contribution")
                return
            rnd.sa_unmask_sent = True
            rnd.sa_reveal_deadline = now + self.config.t_commit
            for peer in sorted(rnd.sa_set):
                data = self._seal(MsgType.UNMASK, peer, rnd.number, now, attempt=rnd.attempt,
                                  meta={"u": sorted(rnd.sa_set)})
                self._send(out, peer, data, "unmask")
        missing = rnd.sa_set - set(rnd.sa_reveals)
        if missing and now < (rnd.sa_reveal_deadline or now) and not (missing <= rnd.gone):
            return
        if missing:
            if missing <= rnd.gone:
                # A gone peer's reveal can never arrive any more (its link delivered everything before it
                # closed), so this attempt can never be unmasked: retrying over the others is safe.
                self._secure_retry(rnd, missing, now, out, "reveal")
            else:  # a slow reveal could still arrive after a retry and expose a difference: give up instead
                self._secure_conclude(rnd, now, out, abort="reveal_missing")
            return
        members = sorted(rnd.sa_set)
        ring_total = secagg.unmask([rnd.contributions[p] for p in members], self._ring_spec,
                                   [rnd.sa_reveals[p] for p in members])
        self._finish_sum(rnd, ring_total, now, out)

    def _finish_sum(self, rnd: _Round, ring_total: np.ndarray, now: float, out: list[Action]) -> None:
        """Decode S_i, check its plausibility (PROTOCOL §3 step 9) and enter the COMMIT exchange."""
        members = sorted(rnd.sa_set)
        rnd.sa_digest = secagg.ring_digest(ring_total)
        total = decode(ring_total)
        weight_sum = sum(rnd.edges[p] for p in members)
        if not secagg.plausible(total, weight_sum, bound=self.config.max_abs or secagg.B_MAX, n=len(members)):
            out.append(Log("warning", f"round {rnd.number}: unmasked sum fails the plausibility check; discarded"))
            self._secure_conclude(rnd, now, out, abort="implausible_sum")
            return
        rnd.sa_sum = total
        self._secure_conclude(rnd, now, out, abort=None)

    # ------------------------------------------------------------------ mode B (SecAgg+), aggregator side

    def _plus_advance(self, rnd: _Round, now: float, out: list[Action]) -> None:
        """SHARES from U -> relay them and fix U1 -> masked inputs from U2 -> shares back -> S_i."""
        assert rnd.agg_deadline is not None
        t = rnd.sb_threshold or shamir_threshold(len(rnd.sa_set))
        if rnd.sb_phase == "shares":
            missing = rnd.sa_set - set(rnd.sb_bundles)
            if missing - rnd.gone and now < rnd.agg_deadline:
                return
            u1 = frozenset(rnd.sa_set - missing)
            if len(u1) < max(t, self.config.u_min):
                self._secure_conclude(rnd, now, out, abort="too_few_contributions")
                return
            rnd.sb_u1 = u1
            for peer in sorted(u1):
                mine = [[sender, bundles[peer]] for sender, bundles in sorted(rnd.sb_bundles.items())
                        if sender in u1 and sender != peer and peer in bundles]
                data = self._seal(MsgType.RELAY, peer, rnd.number, now, meta={"u1": sorted(u1), "s": mine})
                self._send(out, peer, data, "shares")
            rnd.sb_phase = "contrib"
            rnd.agg_deadline = now + self.config.t_agg
            return
        if rnd.sb_phase == "contrib":
            missing = rnd.sb_u1 - set(rnd.contributions)
            if missing - rnd.gone and now < rnd.agg_deadline:
                return
            u2 = rnd.sb_u1 - missing
            if len(u2) < max(t, self.config.u_min):
                self._secure_conclude(rnd, now, out, abort="too_few_contributions")
                return
            if missing:
                out.append(Log("info", f"round {rnd.number}: {len(missing)} contributor(s) dropped after sharing; "
                                       "recovering their masks from shares"))
            rnd.sa_set = frozenset(u2)
            rnd.sb_phase = "unmask"
            rnd.sa_unmask_sent = True
            rnd.sa_reveal_deadline = now + self.config.t_commit
            for peer in sorted(u2):
                data = self._seal(MsgType.UNMASK, peer, rnd.number, now,
                                  meta={"u": sorted(u2), "x": sorted(rnd.sb_u1 - u2)})
                self._send(out, peer, data, "unmask")
            return
        # unmask: gather shares from the survivors
        missing = rnd.sa_set - set(rnd.sb_reveals)
        if missing and now < (rnd.sa_reveal_deadline or now) and not (missing <= rnd.gone):
            return
        if len(rnd.sb_reveals) < t:
            self._secure_conclude(rnd, now, out, abort="reveal_missing")
            return
        assert rnd.half is not None
        try:
            terms = []
            for j in sorted(rnd.sa_set):
                shares = [rev[0][j] for rev in rnd.sb_reveals.values() if j in rev[0]]
                terms.append((-1, secagg.reconstruct_secret(shares, t)))
            for j in sorted(rnd.sb_u1 - rnd.sa_set):  # dropped after sharing: cancel its dangling masks
                shares = [rev[1][j] for rev in rnd.sb_reveals.values() if j in rev[1]]
                keys = EpochKeys.from_private_bytes(secagg.reconstruct_secret(shares, t))
                if keys.public_bytes != rnd.hello_epk.get(j):
                    raise ShamirError("reconstructed key does not match the signed HELLO")
                for k in mask_partners(j, rnd.sb_u1):
                    if k in rnd.sa_set:
                        seed = mask_seed(keys.shared_secret(rnd.hello_epk[k]), federation_id=self.config.federation,
                                         round=rnd.number, attempt=0, aggregator_id=self.me, id_j=j, id_k=k)
                        terms.append((-mask_sign(k, j), seed))
        except (ShamirError, KeyAgreementError, ValueError) as exc:
            out.append(Log("warning", f"round {rnd.number}: cannot reconstruct the masks ({exc}); discarded"))
            self._secure_conclude(rnd, now, out, abort="bad_shares")
            return
        members = sorted(rnd.sa_set)
        ring_total = apply_prg_terms(secagg.unmask([rnd.contributions[p] for p in members], self._ring_spec, []),
                                     terms)
        self._finish_sum(rnd, ring_total, now, out)

    def _on_shares(self, rnd: _Round, msg: Message, out: list[Action]) -> None:
        """A contributor's sealed bundles for the others of U (we only relay them; we cannot open them)."""
        sealed = msg.meta.get("s")
        if (self.phase != AGGREGATE or rnd.sb_phase != "shares" or msg.sender not in rnd.sa_set
                or msg.sender in rnd.sb_bundles or not isinstance(sealed, list)):
            return
        bundles = {item[0]: item[1] for item in sealed if isinstance(item, list) and len(item) == 2
                   and isinstance(item[0], bytes) and isinstance(item[1], bytes) and item[0] in rnd.sa_set}
        if set(bundles) != rnd.sa_set - {msg.sender}:
            self._reject(out, Reject("bad_shares", sender=msg.sender, detail="not one bundle per other contributor"))
            return
        rnd.sb_bundles[msg.sender] = bundles

    def _on_share_reveal(self, rnd: _Round, msg: Message, out: list[Action]) -> None:
        if rnd.sb_phase != "unmask" or msg.sender not in rnd.sa_set or msg.sender in rnd.sb_reveals:
            return
        parsed = []
        for key, expected in (("bs", rnd.sa_set), ("ks", rnd.sb_u1 - rnd.sa_set)):
            items = msg.meta.get(key)
            if not isinstance(items, list):
                self._reject(out, Reject("bad_meta", sender=msg.sender, detail="reveal"))
                return
            got = {it[0]: it[1] for it in items if isinstance(it, list) and len(it) == 2 and isinstance(it[0], bytes)}
            if set(got) != set(expected):
                self._reject(out, Reject("bad_meta", sender=msg.sender, detail=f"reveal {key} set"))
                return
            parsed.append(got)
        rnd.sb_reveals[msg.sender] = (parsed[0], parsed[1])

    def _secure_retry(self, rnd: _Round, missing: frozenset[bytes] | set[bytes], now: float, out: list[Action],
                      what: str) -> None:
        survivors = rnd.sa_set - missing
        if rnd.attempt >= self.config.max_retries or len(survivors) < self.config.u_min:
            reason = "retries_exhausted" if len(survivors) >= self.config.u_min else "too_few_contributions"
            self._secure_conclude(rnd, now, out, abort=reason)
            return
        out.append(Log("info", f"round {rnd.number}: {len(missing)} {what}(s) missing; retry {rnd.attempt + 1} "
                               f"over {len(survivors)} survivors"))
        rnd.attempt += 1
        rnd.sa_set = frozenset(survivors)
        rnd.contributions = {}
        rnd.sa_unmask_sent = False
        rnd.sa_reveals = {}
        rnd.sa_reveal_deadline = None
        rnd.agg_deadline = now + self.config.t_agg
        self._send_setup(rnd, now, out)

    def _secure_conclude(self, rnd: _Round, now: float, out: list[Action], *, abort: str | None) -> None:
        """Fix U_i (empty on abort) and enter the COMMIT exchange, as in plaintext mode."""
        rnd.sa_abort = abort
        self._enter_commit(rnd, frozenset() if abort is not None else frozenset(rnd.sa_set), now, out)

    def _secure_finish(self, rnd: _Round, now: float, out: list[Action]) -> None:
        """x^{r+1} = (1 - sum W) x^{r+1/2} + S_i. A masked sum cannot drop one contributor (that would
        reveal the difference), so a contributor that did not use us is counted as drift, not removed."""
        assert rnd.used is not None and rnd.half is not None and rnd.sa_sum is not None
        weights = {p: rnd.edges[p] for p in sorted(rnd.used)}
        model = secagg.apply_sum(rnd.half, self.spec, rnd.sa_sum, sum(weights.values()))
        drift = tuple(sorted(p for p in rnd.used if p not in rnd.commits or self.me not in rnd.commits[p]))
        self._end_round(rnd, now, out, model=model, used=weights, abort_reason=None, drift=drift,
                        secure_sum_digest=rnd.sa_digest)

    def _secure_message(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        sender, t = msg.sender, msg.msg_type
        if t in (MsgType.SETUP, MsgType.RETRY):
            self._answer_setup(rnd, msg, now, out)
        elif t == MsgType.UNMASK:
            self._answer_unmask(rnd, msg, now, out)
        elif t == MsgType.CONTRIBUTE:
            expected = rnd.sb_u1 if self._plus else rnd.sa_set
            if self._plus and rnd.sb_phase != "contrib":
                return
            if (self.phase == AGGREGATE and not rnd.sa_unmask_sent and sender in expected
                    and msg.attempt == rnd.attempt and sender not in rnd.contributions):
                rnd.contributions[sender] = msg.arrays
        elif t == MsgType.SHARES and self._plus:
            self._on_shares(rnd, msg, out)
        elif t == MsgType.RELAY and self._plus:
            self._on_share_relay(rnd, msg, now, out)
        elif t == MsgType.REVEAL and self._plus:
            self._on_share_reveal(rnd, msg, out)
        elif t == MsgType.REVEAL:
            seed = msg.meta.get("b")
            if not (isinstance(seed, bytes) and len(seed) == 32):
                self._reject(out, Reject("bad_meta", sender=sender, detail="reveal"))
            elif rnd.sa_unmask_sent and sender in rnd.sa_set and msg.attempt == rnd.attempt:
                rnd.sa_reveals.setdefault(sender, seed)
        elif t == MsgType.COMMIT:
            used = self._peer_set(msg, "u")
            if used is None:
                self._reject(out, Reject("bad_meta", sender=sender, detail="commit"))
                return
            rnd.commits.setdefault(sender, used)
            self._answer_commit_request(rnd, msg, now, out)

    def _refuse_setup(self, out: list[Action], msg: Message, reason: str) -> None:
        self.stats.setups_refused[reason] += 1
        self._reject(out, Reject("bad_setup", sender=msg.sender, detail=reason))

    def _answer_setup(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        """Contributor: check the aggregator's request, then mask (mode A) or share secrets (mode B)."""
        agg, attempt = msg.sender, msg.attempt
        members, their_n, their_d = self._peer_set(msg, "u"), self._peer_set(msg, "n"), self._peer_degree(msg)
        relayed = msg.meta.get("h")
        if members is None or their_n is None or their_d is None or not isinstance(relayed, list):
            self._refuse_setup(out, msg, "malformed")
            return
        if agg not in rnd.proposed or agg not in rnd.epoch_keys:
            self._refuse_setup(out, msg, "not_a_neighbour")
            return
        if attempt > (0 if self._plus else self.config.max_retries):
            self._refuse_setup(out, msg, "attempt_above_max")
            return
        if self.me not in members or agg in members or len(members) < self.config.u_min:
            self._refuse_setup(out, msg, "bad_contributor_set")
            return
        known = rnd.hellos.get(agg)
        if not members <= their_n or (known is not None and known[0] != their_n) or their_d < len(their_n):
            self._refuse_setup(out, msg, "not_subset_of_neighbours")
            return
        previous = rnd.sa_answered.get(agg)
        if previous is not None:
            if attempt <= previous[0]:
                return  # a duplicate or an older attempt: answered already
            if not members <= previous[1]:
                self._refuse_setup(out, msg, "retry_not_subset")
                return
        if rnd.half is None:
            rnd.sa_pending[agg] = msg  # answered when the local step is done
            return
        keys: dict[bytes, secagg.RelayedKey] = {}
        for raw in relayed:
            key = hashlib.sha256(raw).digest() if isinstance(raw, bytes) else b""
            checked = self._relayed_ok.get(key)
            if checked is None and isinstance(raw, bytes):
                result = secagg.verify_relayed_hello(
                    raw, aggregator=agg, expected_sender=None, round=rnd.number,
                    federation=self.config.federation, allow_list=self.allow_list, now=now,
                    timestamp_window_s=self.config.timestamp_window_s)
                if isinstance(result, Reject):
                    self._refuse_setup(out, msg, f"relayed_hello:{result.reason}")
                    return
                checked = self._relayed_ok[key] = result
            if checked is not None and checked.sender in members:
                keys[checked.sender] = checked
        weight = mh_weight(rnd.degree, their_d)
        if self._plus:
            self._share_secrets(rnd, msg, members, keys, weight, now, out)
        else:
            self._send_masked(rnd, msg, agg, attempt, members, {p: k.epk for p, k in keys.items()}, weight, now, out)

    def _send_masked(self, rnd: _Round, msg: Message, agg: bytes, attempt: int, members: frozenset[bytes],
                     epks: dict[bytes, bytes], weight: float, now: float, out: list[Action],
                     self_mask: bytes | None = None) -> None:
        """CONTRIBUTE y = enc(W x) + pairwise masks over ``members`` + a self-mask, to ``agg`` only."""
        assert rnd.half is not None
        try:
            seeds = derive_mask_seeds(rnd.epoch_keys[agg], self.me, epks, federation_id=self.config.federation,
                                      round=rnd.number, attempt=attempt, aggregator_id=agg, contributor_ids=members)
            value = rnd.half
            if self.config.dp_distributed is not None:  # our share of the aggregator's noise, fresh per message
                z, clip, colluders = self.config.dp_distributed
                sigma = distributed_sigma(z, clip, len(members), min(colluders, len(members) - 1))
                value = add_gaussian(rnd.half, sigma, self._dp_rng)
            encoded = secagg.encode_scaled(value, self.spec, weight, bound=self.config.max_abs or secagg.B_MAX)
            self_mask = self_mask or os.urandom(32)
            masked = secagg.mask_encoded(encoded, self._ring_spec, self_id=self.me, aggregator=agg,
                                         contributors=members, seeds=seeds, self_mask_seed=self_mask,
                                         min_contributors=self.config.u_min)
        except KeyError:
            self._refuse_setup(out, msg, "missing_partner_key")
            return
        except KeyAgreementError:
            self._refuse_setup(out, msg, "bad_partner_key")
            return
        except (RingEncodingError, TooFewContributorsError) as exc:
            out.append(Log("error", f"cannot mask our model for {agg.hex()[:12]}: {exc}"))
            self._refuse_setup(out, msg, "unencodable_model")
            return
        rnd.sa_answered[agg] = (attempt, members)
        rnd.sa_self_masks[(agg, attempt)] = self_mask
        data = seal(self.identity, msg_type=MsgType.CONTRIBUTE, recipient=agg, federation=self.config.federation,
                    round=rnd.number, attempt=attempt, arrays=masked, spec=self._ring_spec,
                    meta={"d": rnd.degree}, now_ms=int(now * 1000), nonce=self._nonce(16))
        self.stats.masked_contributions += 1
        self._send(out, agg, data, "contribute")

    def _answer_unmask(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        """Contributor: reveal b^a only for the attempt we answered last (mode A), or the shares (mode B)."""
        if self._plus:
            self._reveal_shares(rnd, msg, now, out)
            return
        agg = msg.sender
        answered = rnd.sa_answered.get(agg)
        members = self._peer_set(msg, "u")
        if answered is None or answered[0] != msg.attempt or members != answered[1]:
            self._reject(out, Reject("bad_unmask", sender=agg, detail="not the attempt we contributed to last"))
            return
        seed = rnd.sa_self_masks.get((agg, msg.attempt))
        if seed is None:
            return
        rnd.sa_revealed[agg] = msg.attempt
        for key in [k for k in rnd.sa_self_masks if k[0] == agg and k[1] != msg.attempt]:
            del rnd.sa_self_masks[key]  # superseded attempts stay dangling forever
        data = self._seal(MsgType.REVEAL, agg, rnd.number, now, attempt=msg.attempt, meta={"b": seed})
        self._send(out, agg, data, "reveal")

    # ------------------------------------------------------------------ mode B (SecAgg+), contributor side

    def _share_secrets(self, rnd: _Round, msg: Message, members: frozenset[bytes],
                       keys: dict[bytes, secagg.RelayedKey], weight: float, now: float, out: list[Action]) -> None:
        """SHARES to the aggregator: t-of-|U| shares of b_j and of our masking key for it, one sealed
        bundle per other contributor (under the separate encryption keys, never the shared one)."""
        agg = msg.sender
        others = members - {self.me}
        if not all(p in keys and keys[p].cpk is not None for p in others):
            self._refuse_setup(out, msg, "missing_partner_key")
            return
        b_seed = os.urandom(32)
        t = shamir_threshold(len(members))
        bundles = secagg.share_secrets(b_seed, rnd.epoch_keys[agg].private_bytes(), members, t)
        enc = rnd.enc_keys[agg]
        sealed = []
        try:
            for peer in sorted(others):
                sealed.append([peer, seal_bundle(enc, keys[peer].cpk, bundles[peer],
                                                 federation_id=self.config.federation, round=rnd.number,
                                                 sender_id=self.me, recipient_id=peer)])
        except KeyAgreementError:
            self._refuse_setup(out, msg, "bad_partner_key")
            return
        rnd.sa_answered[agg] = (0, members)
        rnd.sb_own[agg] = {"b": b_seed, "own": bundles[self.me], "keys": keys, "w": weight, "t": t,
                           "setup": msg}
        data = self._seal(MsgType.SHARES, agg, rnd.number, now, meta={"s": sealed})
        self._send(out, agg, data, "shares")

    def _on_share_relay(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        """The aggregator relays the bundles addressed to us and fixes U1 (who shared): now mask over U1."""
        agg = msg.sender
        own = rnd.sb_own.get(agg)
        u1, relayed = self._peer_set(msg, "u1"), msg.meta.get("s")
        if own is None or agg in rnd.sb_held or u1 is None or not isinstance(relayed, list):
            return
        members = rnd.sa_answered[agg][1]
        if self.me not in u1 or not u1 <= members or len(u1) < max(self.config.u_min, own["t"]):
            self._refuse_setup(out, msg, "bad_share_set")
            return
        held: dict[bytes, tuple] = {self.me: secagg.open_share_bundle(own["own"])}
        for item in relayed:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in u1 and isinstance(item[1], bytes)):
                continue
            sender, blob = item
            try:
                plain = open_bundle(rnd.enc_keys[agg], own["keys"][sender].cpk, blob,
                                    federation_id=self.config.federation, round=rnd.number, sender_id=sender,
                                    recipient_id=self.me)
                held[sender] = secagg.open_share_bundle(plain)
            except (BundleDecryptionError, ShamirError, KeyAgreementError, KeyError):
                self._reject(out, Reject("bad_shares", sender=sender, detail="bundle failed to open"))
        if set(held) != set(u1):
            self._refuse_setup(out, msg, "missing_shares")
            return
        rnd.sb_held[agg] = held
        self._send_masked(rnd, own["setup"], agg, 0, u1, {p: k.epk for p, k in own["keys"].items()}, own["w"],
                          now, out, self_mask=own["b"])
        rnd.sa_answered[agg] = (0, u1)

    def _reveal_shares(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        """For each contributor j of U1: its self-mask share if it survived, its key share if it dropped,
        never both, and only once per aggregator and round."""
        agg = msg.sender
        held = rnd.sb_held.get(agg)
        survivors, dropped = self._peer_set(msg, "u"), self._peer_set(msg, "x")
        own = rnd.sb_own.get(agg)
        if held is None or own is None or survivors is None or dropped is None or agg in rnd.sa_revealed:
            self._reject(out, Reject("bad_unmask", sender=agg, detail="nothing to reveal"))
            return
        if (survivors & dropped or (survivors | dropped) != set(held) or self.me not in survivors
                or len(survivors) < own["t"]):
            self._reject(out, Reject("bad_unmask", sender=agg, detail="survivor/dropout sets inconsistent"))
            return
        rnd.sa_revealed[agg] = 0
        data = self._seal(MsgType.REVEAL, agg, rnd.number, now, meta={
            "bs": [[p, held[p][0]] for p in sorted(survivors)], "ks": [[p, held[p][1]] for p in sorted(dropped)]})
        self._send(out, agg, data, "reveal")

    # ------------------------------------------------------------------ receiving

    def _verify(self, data: bytes, now: float) -> Message | Reject:
        future = {int(MsgType.HELLO)}
        past = {int(MsgType.MODEL_REQUEST)}
        current = self.round_number
        if self.phase == SYNC:  # a syncing node takes a model reply from any round (it decides on its own)
            future.add(int(MsgType.MODEL_REPLY))
            past.add(int(MsgType.MODEL_REPLY))
        secure = {}
        if self._secure:  # masked '<u8' contributions only; a model reply carries the round, never a model
            secure = dict(payload_types=frozenset({int(MsgType.CONTRIBUTE)}),
                          allowed_payload_dtypes=frozenset({secagg.RING_DTYPE}))
        ctx = VerifyContext(
            **secure,
            self_id=self.me, federation=self.config.federation, allow_list=self.allow_list,
            current_round=current, now_ms=int(now * 1000), replay=self._replay, model_spec=self.spec,
            unbounded_future_types=frozenset(future), unbounded_past_types=frozenset(past),
            rounds_behind=self.config.rounds_behind,
            rounds_ahead=self.config.rounds_ahead, timestamp_window_ms=int(self.config.timestamp_window_s * 1000),
            max_message_bytes=self.config.max_message_bytes, max_abs=self.config.max_abs,
            offenders=self._offenders)
        return self.codec.open(data, ctx)

    def _reject(self, out: list[Action], rej: Reject) -> None:
        self.stats.rejects[rej.reason] += 1
        out.append(Rejected(rej.reason, rej.sender, rej.detail))

    def _on_bytes(self, data: bytes, now: float, out: list[Action]) -> None:
        self.stats.messages_in += 1
        self.stats.bytes_in += len(data)
        result = self._verify(data, now)
        if isinstance(result, Reject):
            self._reject(out, result)
            return
        if result.sender == self.me:
            return
        if result.sender not in self.members:
            self.members.add(result.sender)  # a verified message proves liveness and admission
        if self._secure and result.msg_type == MsgType.HELLO:
            self._hello_raw.setdefault((result.round, result.sender), data)
        self._dispatch(result, now, out)

    def _dispatch(self, msg: Message, now: float, out: list[Action]) -> None:
        t = msg.msg_type
        if t == MsgType.MODEL_REQUEST:
            self._answer_model_request(msg, now, out)
            return
        if t == MsgType.MODEL_REPLY:
            self._on_model_reply(msg, now, out)
            return
        if t == MsgType.STATUS:
            return
        if self.phase == SYNC:
            if t == MsgType.HELLO:
                self._on_hello_while_syncing(msg, now, out)
            return
        r = msg.round
        if r > self.round_number:
            if t == MsgType.HELLO and self._should_jump(msg):
                self._jump(msg, now, out)
                return
            self._buffer_message(msg)
            return
        if r == self.round_number and self._cur is not None and self.phase != DONE:
            self._on_current(self._cur, msg, now, out)
        else:
            for old in (self._cur if self.phase == DONE else None, self._prev):
                if old is not None and r == old.number:
                    self._on_previous(old, msg, now, out)
                    return

    def _buffer_message(self, msg: Message) -> None:
        queue = self._buffer.setdefault(msg.round, [])
        queue.append(msg)
        total = sum(len(v) for v in self._buffer.values())
        while total > self.config.max_buffered:
            newest = max(self._buffer)
            self._buffer[newest].pop(0)
            if not self._buffer[newest]:
                del self._buffer[newest]
            total -= 1

    @staticmethod
    def _peer_degree(msg: Message) -> int | None:
        d = msg.meta.get("d")
        return d if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1_000_000 else None

    @staticmethod
    def _peer_set(msg: Message, key: str) -> frozenset[bytes] | None:
        value = msg.meta.get(key)
        if not isinstance(value, list) or not all(isinstance(v, bytes) and len(v) == 32 for v in value):
            return None
        return frozenset(value)

    def _on_current(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        sender, t = msg.sender, msg.msg_type
        if t == MsgType.HELLO:
            their_n, their_d = self._peer_set(msg, "n"), self._peer_degree(msg)
            if their_n is None or their_d is None or their_d < len(their_n):
                self._reject(out, Reject("bad_meta", sender=sender, detail="hello"))
                return
            rnd.hellos.setdefault(sender, (their_n, their_d))
            if self._secure:
                epk, cpk = secagg.hello_epk(msg), secagg.hello_epk(msg, "cpk")
                if epk is not None and (cpk is not None or not self._plus):
                    rnd.hello_epk.setdefault(sender, epk)
                    if cpk is not None:
                        rnd.hello_cpk.setdefault(sender, cpk)
                return
            if self.me in their_n:
                self._maybe_late_edge(rnd, sender, their_d, now, out)
            return
        if self._secure:
            self._secure_message(rnd, msg, now, out)
            return
        degree = self._peer_degree(msg)
        if t in (MsgType.CONTRIBUTE, MsgType.RETRY) and degree is not None:
            rnd.implied.setdefault(sender, degree)
            self._maybe_late_edge(rnd, sender, degree, now, out)
        if t == MsgType.CONTRIBUTE:
            if sender in rnd.proposed and sender not in rnd.contributions:
                if rnd.used is None:
                    rnd.contributions[sender] = msg.arrays
                elif sender not in rnd.used:
                    self._send_commit(rnd, sender, now, out)  # tell it promptly it is not used this round
        elif t == MsgType.RETRY:
            self._answer_retry(rnd, msg, now, out)
        elif t == MsgType.COMMIT:
            used = self._peer_set(msg, "u")
            if used is None:
                self._reject(out, Reject("bad_meta", sender=sender, detail="commit"))
                return
            rnd.commits.setdefault(sender, used)
            self._answer_commit_request(rnd, msg, now, out)

    def _maybe_late_edge(self, rnd: _Round, peer: bytes, degree: int, now: float, out: list[Action]) -> None:
        """An edge discovered after contributions went out (lost or late HELLO)."""
        if self.phase != AGGREGATE or peer in rnd.edges or peer not in rnd.proposed or peer in rnd.gone:
            return
        rnd.edges[peer] = mh_weight(rnd.degree, degree)
        self._send_contribution(rnd, peer, now, out)

    def _answer_retry(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        peer = msg.sender
        if msg.attempt > self.config.max_retries or peer not in rnd.proposed:
            self._reject(out, Reject("bad_retry", sender=peer))
            return
        if rnd.used is not None:
            # our aggregation is over: our COMMIT decides; resend it, and the contribution if it is used
            self._send_commit(rnd, peer, now, out)
            if peer in rnd.used and rnd.half is not None:
                self._send_contribution(rnd, peer, now, out, attempt=msg.attempt)
            return
        if rnd.half is not None and peer in rnd.edges:
            self._send_contribution(rnd, peer, now, out, attempt=msg.attempt)

    def _on_previous(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        t = msg.msg_type
        if self._secure:  # we moved on, but still mask for (and reveal to) slower aggregators
            if t in (MsgType.SETUP, MsgType.RETRY):
                self._answer_setup(rnd, msg, now, out)
            elif t == MsgType.UNMASK:
                self._answer_unmask(rnd, msg, now, out)
            elif t == MsgType.RELAY and self._plus:
                self._on_share_relay(rnd, msg, now, out)
            elif t == MsgType.COMMIT and rnd.used is not None:
                self._answer_commit_request(rnd, msg, now, out)
            return
        if t == MsgType.RETRY and msg.attempt <= self.config.max_retries and rnd.used is not None:
            self._send_commit(rnd, msg.sender, now, out)
            if msg.sender in rnd.used and rnd.half is not None:
                self._send_contribution(rnd, msg.sender, now, out, attempt=msg.attempt)
        elif t == MsgType.COMMIT and rnd.used is not None:
            self._answer_commit_request(rnd, msg, now, out)
            if msg.sender in rnd.used and msg.sender not in rnd.commits:
                self.stats.drift_events += 1  # we excluded it after a timeout; it may have used us

    def _answer_commit_request(self, rnd: _Round, msg: Message, now: float, out: list[Action]) -> None:
        """The sender still waits for our COMMIT (ours was lost): send it again."""
        waiting = self._peer_set(msg, "w")
        if rnd.used is not None and waiting and self.me in waiting:
            self._send_commit(rnd, msg.sender, now, out)

    # ------------------------------------------------------------------ resync and late join

    def _should_jump(self, msg: Message) -> bool:
        """A verified HELLO from ahead: jump when far ahead, or when we are stuck before contributing."""
        gap = msg.round - self.round_number
        if gap > self.config.rounds_ahead:
            return True
        rnd = self._cur
        return (self.phase == TRAIN and rnd is not None and not rnd.contributions and msg.sender in rnd.proposed
                and msg.sender not in rnd.hellos and msg.sender not in rnd.implied)

    def _jump(self, msg: Message, now: float, out: list[Action]) -> None:
        gap = msg.round - self.round_number
        rnd = self._cur
        if gap > self.config.rounds_ahead:
            self.stats.resyncs += 1
            self._request_model(msg.sender, msg.round, now, out)
            return
        # a little behind: skip ahead keeping our model; reuse the local step already under way
        out.append(Log("info", f"behind by {gap} round(s): skipping to round {msg.round}"))
        step_round = rnd.step_round if rnd is not None else None
        half = rnd.half if rnd is not None else None
        if rnd is not None:
            self.stats.aborts["behind"] += 1
        self._begin_round(msg.round, now, out, step_round=step_round if half is None else None, half=half)
        if self._cur is not None and self._cur.number == msg.round:
            self._on_current(self._cur, msg, now, out)

    def _sync_request(self, now: float, out: list[Action]) -> None:
        """Joining: ask one live peer (deterministic pick per round) for its round and model."""
        if not self.members:
            return
        ordered = sorted(self.members, key=lambda p: hashlib.sha256(self.me + p).digest())
        self._request_model(ordered[0], self.round_number, now, out)

    def _on_hello_while_syncing(self, msg: Message, now: float, out: list[Action]) -> None:
        if self._sync_target is None and msg.round > self.round_number:
            self._request_model(msg.sender, msg.round, now, out)

    def _request_model(self, peer: bytes, target: int, now: float, out: list[Action]) -> None:
        self.phase = SYNC
        self._sync_target = target
        self._sync_deadline = now + self.config.t_sync
        out.append(Log("info", f"asking {peer.hex()[:12]} for its current model (round >= {target})"))
        data = self._seal(MsgType.MODEL_REQUEST, peer, self.round_number, now)
        self._send(out, peer, data, "model_request")

    def _answer_model_request(self, msg: Message, now: float, out: list[Action]) -> None:
        """Serve our current x^r (also while syncing: simultaneous joiners must not wait on each other).

        With secure aggregation the reply carries the round only: a model in the clear would undo the
        masking. The joiner then continues from its own model at the federation's round.
        """
        arrays = None if self._secure else self.model
        data = self._seal(MsgType.MODEL_REPLY, msg.sender, self.round_number, now, arrays=arrays,
                          meta={"r": self.round_number})
        self._send(out, msg.sender, data, "model_reply")

    def _on_model_reply(self, msg: Message, now: float, out: list[Action]) -> None:
        if self.phase != SYNC:
            return
        self._sync_deadline = None
        self._sync_target = None
        self._prev = None
        if msg.round > self.round_number and not msg.arrays:  # secure aggregation: the round, no model
            out.append(Log("info", f"skipping to the federation's round {msg.round} with the local model "
                                   "(secure aggregation: models are never sent in the clear)"))
            self.stats.aborts["behind"] += 1
            self._begin_round(msg.round, now, out)
        elif msg.round > self.round_number:
            model = {k: np.array(v, copy=True) for k, v in msg.arrays.items()}
            self.model = model
            out.append(AdoptModel(msg.round, model, msg.sender))
            self._begin_round(msg.round, now, out)
        else:  # we are at least as far along: keep our own (checkpointed) model and round
            self._begin_round(self.round_number, now, out)

    # ------------------------------------------------------------------ timers

    def _deadline(self) -> float | None:
        rnd = self._cur
        if self.phase == SYNC:
            return self._sync_deadline
        if rnd is None or self.phase == DONE:
            return None
        if self.phase == TRAIN:
            # once the hello wait is over, only LocalStepDone can move us: no timer (no busy loop)
            pending = [t for t in (rnd.hello_deadline,
                                   None if rnd.hello_resent else rnd.started + self.config.t_hello / 2)
                       if t is not None and t > self._now]
            return min(pending) if pending else None
        if self.phase == AGGREGATE:
            if self._secure and rnd.sa_unmask_sent:
                return rnd.sa_reveal_deadline
            return rnd.agg_deadline
        if self.phase == COMMITTING:
            return min(rnd.commit_deadline, rnd.commit_nudge_at)
        return None

    def _finish(self, out: list[Action]) -> list[Action]:
        deadline = self._deadline()
        if deadline is not None and deadline != self._timer:
            out.append(SetTimer(deadline))
        self._timer = deadline
        return out
