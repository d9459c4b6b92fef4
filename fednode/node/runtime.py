"""The runtime of one peer: drives the sans-I/O round with a transport and the trainer.

Threads:
- transport callbacks (Zenoh threads) only put events on ``self._events``;
- one worker thread runs the trainer's jobs (local steps, evaluations) in order;
- the main loop takes events, feeds the state machine with the wall clock, and carries out
  its actions: sends, timers, local steps, and at every round end a checkpoint (atomic,
  fsynced) before the status goes out.

A node alone keeps training; when peers appear it joins the gossip; a (re)starting node
asks a live peer for the federation's round and model first (listen-only join).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fednode.gossip.events import (Abort, AdoptModel, Broadcast, Commit, Finished, LocalStepDone, Log,
                                   MessageReceived, PeerJoined, PeerLeft, Rejected, Send, SetTimer,
                                   StartLocalStep, TimerFired)
from fednode.gossip.round import AGGREGATE, COMMITTING, DONE, SYNC, TRAIN, GossipNode
from fednode.node.checkpoint import Checkpoint, atomic_write, load_checkpoint, save_checkpoint
from fednode.node.config import NodeConfig
from fednode.node.hooks import RuntimeHooks
from fednode.node.history import RoundRecord, history_from_json, history_to_json
from fednode.node.status import json_default, seal_status
from fednode.node.trajectory import TrajectoryWriter
from fednode.security.arrays import Model
from fednode.security.identity import AllowList, Identity, short_id
from fednode.security.ledger import PrivacyLedger, Release
from fednode.security.noise import make_rng, privatize_update

log = logging.getLogger("fednode.node")

_STATE_NAMES = {TRAIN: "training", AGGREGATE: "aggregating", COMMITTING: "committing", SYNC: "syncing", DONE: "done"}

_KILL_AFTER_CONTRIBUTE: int | None = (int(os.environ["FEDNODE_FAULT_KILL_AFTER_CONTRIBUTE"])
                                      if os.environ.get("FEDNODE_FAULT_KILL_AFTER_CONTRIBUTE") else None)
"""Fault injection for dropout tests: SIGKILL this process once its first masked (or plaintext) contribution
of this round or later has left, so some aggregators have it and others never will."""


def _die_now(reason: str, transport: Any = None) -> None:
    getattr(transport, "flush", lambda timeout_s: True)(5.0)  # what "was sent" must really leave
    log.warning(reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class NodeRuntime:
    """One fednode peer. ``run()`` blocks until the configured rounds are done or ``stop()``."""

    def __init__(self, config: NodeConfig, *, trainer: Any, identity: Identity, allow_list: AllowList,
                 transport_factory: Callable[..., Any]) -> None:
        self.config = config
        self.trainer = trainer
        self.identity = identity
        self.allow_list = allow_list
        self._transport_factory = transport_factory
        self._events: queue.Queue = queue.Queue()
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.history: list[RoundRecord] = []
        self.restarts = 0
        self.last_eval: tuple[float, float] | None = None
        self._last_stats = None
        self.machine: GossipNode | None = None
        self.transport = None
        self._deadline: float | None = None
        self._finished_at: float | None = None
        self._pending_records: dict[int, RoundRecord] = {}
        self._bytes_base = (0, 0)  # traffic before the last restart (from the checkpoint's history)
        self._trajectory: TrajectoryWriter | None = None
        self.timing = {"train_s": 0.0, "eval_s": 0.0, "handle_s": 0.0, "checkpoint_s": 0.0}
        # differential privacy: the ledger is loaded before anything can be released
        self.ledger: PrivacyLedger | None = None
        self.budget_exhausted = False
        self._exhausted_until: float | None = None
        self._step_bases: dict[int, Model] = {}
        self._dp_rng = make_rng() if config.dp != "off" else None
        self.hooks = RuntimeHooks(config, identity, allow_list, trainer)  # fednode/node/hooks.py
        if config.dp != "off":
            self.ledger = PrivacyLedger(config.ledger_path, config.dp_delta, fallback=self._release_for(0))
            if self.ledger.recovered_torn_record:
                log.warning("privacy ledger: the last record was torn by a crash; counted as a release")
            if config.dp_epsilon is not None and self.ledger.epsilon() > config.dp_epsilon:
                self.budget_exhausted = True  # a restart after exhaustion stays silent

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)

    def _load_state(self) -> tuple[int, Model, bool]:
        ckpt = load_checkpoint(self.config.checkpoint_path)
        if ckpt is None:
            return 0, self.trainer.init_params(), False
        spec = self.trainer.model_spec
        if not spec.matches(ckpt.model):
            from fednode.node.checkpoint import CheckpointError
            raise CheckpointError(f"checkpoint {self.config.checkpoint_path} holds a model of another shape "
                                  f"(task changed?); move it away to start fresh")
        if ckpt.optimizer:
            try:
                self.trainer.load_optimizer_state(ckpt.optimizer)
            except Exception as exc:  # an optimizer mismatch is not fatal: restart the optimizer
                log.warning("optimizer state in checkpoint not usable (%s); resetting it", exc)
        self.restarts = ckpt.restarts + 1
        self.history.extend(history_from_json(ckpt.meta.get("history") or [], ckpt.meta.get("history_peers")))
        last = next((r for r in reversed(self.history) if r.bytes_sent is not None), None)
        self._bytes_base = (last.bytes_sent, last.bytes_received or 0) if last else (0, 0)
        log.info("resuming from checkpoint: round %d (restart #%d)", ckpt.round, self.restarts)
        return ckpt.round, ckpt.model, True

    def run(self) -> int:
        start_round, model, resumed = self._load_state()
        self.machine = GossipNode(self.identity, self.allow_list, self.trainer.model_spec, model,
                                  self.config.round_config(), start_round=start_round, joining=True)
        self.hooks.install(self.machine, model)
        # persist the restart count at once, so a crash loop is visible in the report
        if resumed:
            self._save_checkpoint(self.machine.round, self.machine.model)
        if self.config.record_trajectory:
            self._trajectory = TrajectoryWriter(self.config.trajectory_path, self.trainer.model_spec.size)
        # compile before announcing ourselves: peers would otherwise wait on our first step's JIT compile
        warmup = getattr(self.trainer, "warmup", None)
        if warmup is not None:
            t0 = time.perf_counter()
            warmup(model)
            log.info("trainer ready (compiled in %.1f s)", time.perf_counter() - t0)
        if self.budget_exhausted:
            assert self.ledger is not None
            log.warning("privacy budget already spent (epsilon %.4f > %.4f at delta %g): not joining the federation",
                        self.ledger.epsilon(), self.config.dp_epsilon, self.config.dp_delta)
            self._write_status_file()
            if self.config.rounds is None:
                self._stop.wait()
            return 0
        worker = threading.Thread(target=self._worker, name="trainer", daemon=True)
        worker.start()
        self.transport = self._transport_factory(
            on_message=lambda data: self.hooks.inbound.admit(len(data)) and self._events.put(("msg", data)),
            on_peer_joined=lambda peer: self._events.put(("joined", peer)),
            on_peer_left=lambda peer: self._events.put(("left", peer)),
            model_provider=None)
        try:
            self.transport.start()
            log.info("node %s up in federation %r (%d admitted peers), task %s, shard %d examples",
                     self.identity.short_id, self.config.federation, len(self.allow_list),
                     self.config.task, getattr(self.trainer, "shard_size", -1))
            if not resumed and self.config.min_peers > 0:
                self._wait_for_peers()
            for peer in sorted(self.transport.live_peers()):
                self.machine.handle(PeerJoined(peer, time.time()))
            self._apply(self.machine.start(time.time()))
            self._loop()
        finally:
            self._jobs.put(None)
            worker.join(timeout=30)
            try:
                self._write_status_file()
            finally:
                if self._trajectory is not None:
                    self._trajectory.close()
                if self.transport is not None:
                    self.transport.close()
        return 0

    # ------------------------------------------------------------------ differential privacy

    def _release_for(self, rnd: int) -> Release:
        """The DP event one round's release costs (PROTOCOL §4)."""
        c = self.config
        z = float(c.dp_noise_multiplier or 0.0) or 1.0  # calibration sets it before run(); 1.0 only for a torn record
        if c.dp == "dpsgd":
            return Release(rnd, "dpsgd", z, float(self.trainer.sampling_rate), int(self.trainer.steps_per_round),
                           time.time())
        return Release(rnd, c.dp if c.dp != "off" else "local", z, 1.0, 1, time.time())

    def _privatize(self, rnd: int, model: Model) -> Model | None:
        """Noise (local DP) and record this round's release durably before the machine sees it; None
        when the release would exceed the budget (the node then stops sharing)."""
        assert self.ledger is not None
        base = self._step_bases.pop(rnd, None)
        rel = self._release_for(rnd)
        budget = self.config.dp_epsilon
        if budget is not None and self.ledger.would_exceed(budget, rel):
            self._exhaust(rnd, rel)
            return None
        if self.config.dp == "local" and base is not None:
            delta = {k: model[k].astype(np.float64) - base[k].astype(np.float64) for k in model}
            noised, _norm = privatize_update(delta, clip=self.config.dp_clip,
                                             noise_multiplier=float(self.config.dp_noise_multiplier),
                                             rng=self._dp_rng)
            model = {k: (base[k].astype(np.float64) + noised[k]).astype(model[k].dtype) for k in model}
        self.ledger.append(rel)  # fsynced: from here on the release may leave
        return model

    def _exhaust(self, rnd: int, rel: Release) -> None:
        assert self.ledger is not None
        self.budget_exhausted = True
        log.warning("privacy budget: releasing round %d would take epsilon from %.4f to %.4f > %.4f (delta %g); "
                    "this node stops sharing anything derived from its data", rnd, self.ledger.epsilon(),
                    self.ledger.epsilon(rel), self.config.dp_epsilon, self.config.dp_delta)
        self._publish_status()
        time.sleep(0.3)  # let the last status go out
        if self.transport is not None:
            self.transport.close()  # leave the federation: peers see us gone and stop waiting for us
        if self.config.rounds is not None:  # stay up about as long as the federation's remaining rounds
            done = [r.timings.get("total", 0.0) for r in self.history if r.timings]
            per_round = (sum(done) / len(done)) if done else self.config.t_hello + self.config.t_agg
            self._exhausted_until = time.time() + min(600.0, per_round * max(0, self.config.rounds - rnd))

    def _wait_for_peers(self) -> None:
        """Bootstrap quorum: a fresh node gives its peers a moment to come up before round 0."""
        want, until = self.config.min_peers, time.time() + self.config.wait_peers_s
        while not self._stop.is_set() and time.time() < until:
            have = len(self.transport.live_peers() & set(self.allow_list.peer_ids))
            if have >= want:
                log.info("%d peer(s) live: starting", have)
                return
            time.sleep(0.1)
        log.info("only %d of %d expected peers live after %.0f s: starting anyway",
                 len(self.transport.live_peers()), want, self.config.wait_peers_s)

    def _loop(self) -> None:
        linger = self.config.linger_s if self.config.linger_s is not None else \
            self.config.t_agg + self.config.t_commit
        while not self._stop.is_set():
            now = time.time()
            if self._finished_at is not None and now >= self._finished_at + linger:
                return
            timeout = 1.0
            if self._deadline is not None:
                timeout = min(timeout, max(0.0, self._deadline - now))
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = ("timer", None)
            if item is None:
                return
            kind, payload = item
            now = time.time()
            if self.budget_exhausted:  # nothing derived from our data leaves any more: drop the network
                if kind == "eval":
                    self._on_eval(*payload)
                if self._exhausted_until is not None and now >= self._exhausted_until:
                    return
                continue
            if kind == "msg":
                self.hooks.received(payload)
                event = MessageReceived(payload, now)
            elif kind == "joined":
                event = PeerJoined(payload, now)
            elif kind == "left":
                event = PeerLeft(payload, now)
            elif kind == "step":
                rnd, model = payload
                if self.ledger is not None and not self.budget_exhausted:
                    model = self._privatize(rnd, model)
                if self.budget_exhausted or model is None:
                    continue
                model = self.hooks.step_done(rnd, model)
                event = LocalStepDone(rnd, model, now)
            elif kind == "eval":
                self._on_eval(*payload)
                continue
            else:
                if self._deadline is None or now < self._deadline:
                    continue
                event = TimerFired(now)
            t0 = time.perf_counter()
            actions = self.machine.handle(event)
            self.timing["handle_s"] += time.perf_counter() - t0
            self._apply(actions)

    # ------------------------------------------------------------------ trainer worker

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, rnd, model = job
            try:
                if kind == "step":
                    t0 = time.perf_counter()
                    new = self.trainer.local_step(model)
                    self.timing["train_s"] += time.perf_counter() - t0
                    self._events.put(("step", (rnd, new)))
                else:
                    t0 = time.perf_counter()
                    acc, loss = self.trainer.evaluate(model)
                    self.timing["eval_s"] += time.perf_counter() - t0
                    self._events.put(("eval", (rnd, float(acc), float(loss))))
            except Exception:
                log.exception("trainer job %s for round %d failed", kind, rnd)
                if kind == "step":  # hand back x^r unchanged: the machine keeps going
                    self._events.put(("step", (rnd, model)))

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.transport.send(action.peer, self.hooks.outgoing(action.kind, action.data))
                if action.kind == "contribute" and _KILL_AFTER_CONTRIBUTE is not None \
                        and self.machine is not None and self.machine.round >= _KILL_AFTER_CONTRIBUTE:
                    _die_now(f"fault injection: SIGKILL after contributing, round {self.machine.round}", self.transport)
            elif isinstance(action, Broadcast):
                self.transport.broadcast(action.data)
            elif isinstance(action, SetTimer):
                self._deadline = action.deadline
            elif isinstance(action, StartLocalStep):
                self.hooks.step_started(action.round, action.model)
                if self.ledger is not None:
                    self._step_bases = {action.round: action.model}
                self._jobs.put(("step", action.round, action.model))
            elif isinstance(action, (Commit, Abort)):
                self._on_round_end(action)
            elif isinstance(action, AdoptModel):
                log.info("adopted the model of %s at round %d (late join / resync)",
                         short_id(action.source), action.round)
                self._save_checkpoint(action.round, action.model)
                self._jobs.put(("eval", action.round, action.model))
            elif isinstance(action, Finished):
                log.info("finished %d rounds; answering peers for a few more seconds", action.round)
                self._finished_at = time.time()
            elif isinstance(action, Rejected):
                log.debug("rejected a message: %s %s", action.reason, action.detail)
            elif isinstance(action, Log):
                getattr(log, action.level if action.level in ("debug", "info", "warning", "error") else "info")(
                    action.text)
        if self.machine is not None:
            self._deadline = self.machine.next_deadline()

    def _on_round_end(self, action: Commit | Abort) -> None:
        s = action.stats
        timings = {"total": s.total_s, "train": s.local_step_s, "hello": s.hello_wait_s,
                   "aggregate": s.aggregate_s, "commit": s.commit_s}
        used = tuple(action.used) if isinstance(action, Commit) else ()
        rec = RoundRecord(action.round, "commit" if isinstance(action, Commit) else action.reason,
                          neighbours=len(used), timings=timings, t_end=time.time(), round_time_s=s.total_s,
                          bytes_sent=self._bytes_base[0] + int(getattr(self.transport, "bytes_sent", 0)),
                          bytes_received=self._bytes_base[1] + int(getattr(self.transport, "bytes_received", 0)),
                          peers=used)
        self._last_stats = s
        self.history.append(rec)
        self._pending_records[action.round] = rec
        # x^{r+1} is durable before anything derived from it leaves this node
        self._save_checkpoint(action.round + 1, action.model)
        if self._trajectory is not None:
            self._trajectory.append(action.round, action.model)
        self._jobs.put(("eval", action.round, action.model))
        if isinstance(action, Commit):
            log.info("round %d: averaged with %d peer(s) (self weight %.2f) in %.2fs [train %.2f hello %.2f "
                     "aggregate %.2f commit %.2f]", action.round, len(action.used), action.self_weight,
                     s.total_s, s.local_step_s, s.hello_wait_s, s.aggregate_s, s.commit_s)
            if action.secure_sum_digest:
                log.info("round %d: masked sum over %s in attempt %d, ring digest %s", action.round,
                         ",".join(short_id(p) for p in action.used), s.attempts - 1, action.secure_sum_digest)
        else:
            log.info("round %d: no averaging (%s) in %.2fs", action.round, action.reason, s.total_s)

    def _on_eval(self, rnd: int, acc: float, loss: float) -> None:
        self.last_eval = (acc, loss)
        rec = self._pending_records.pop(rnd, None)
        if rec is not None:
            rec.accuracy, rec.loss = acc, loss
        log.info("round %d: test accuracy %.4f, loss %.4f", rnd, acc, loss)
        self._publish_status()

    # ------------------------------------------------------------------ persistence and status

    def _save_checkpoint(self, next_round: int, model: Model) -> None:
        t0 = time.perf_counter()
        try:
            optimizer = self.trainer.optimizer_state()
        except Exception:
            optimizer = {}
        history, history_peers = history_to_json(self.history[-200:])
        save_checkpoint(self.config.checkpoint_path, Checkpoint(
            round=next_round, model=model, optimizer=optimizer, restarts=self.restarts,
            meta={"federation": self.config.federation, "peer": self.identity.peer_id.hex(),
                  "task": self.config.task, "saved_at": time.time(), "history": history,
                  "history_peers": history_peers}))
        self.timing["checkpoint_s"] += time.perf_counter() - t0

    def status_fields(self) -> dict[str, Any]:
        m = self.machine
        st = m.stats
        acc, loss = self.last_eval if self.last_eval else (None, None)
        last = self._last_stats
        fields: dict[str, Any] = {
            "peer": self.identity.peer_id.hex(), "short": self.identity.short_id,
            "state": _STATE_NAMES.get(m.phase, m.phase), "round": m.round,
            "rounds_completed": st.rounds_completed, "rounds_averaged": st.rounds_averaged,
            "accuracy": acc, "loss": loss,
            "neighbours": [short_id(p) for p in (last.neighbours if last else ())],
            "bytes_in": self.transport.bytes_received if self.transport else st.bytes_in,
            "bytes_out": self.transport.bytes_sent if self.transport else st.bytes_out,
            "messages_in": st.messages_in, "messages_out": st.messages_out,
            "rejects": dict(st.rejects), "rejects_by_peer": {p.hex(): n for p, n in st.rejects_by_peer.items()},
            "aborts": dict(st.aborts), "retries": st.retries_sent, "resyncs": st.resyncs,
            "drift_events": st.drift_events, "exclusions": {p.hex(): n for p, n in st.exclusions.items()},
            "timings": ({"total": last.total_s, "train": last.local_step_s, "hello": last.hello_wait_s,
                         "aggregate": last.aggregate_s, "commit": last.commit_s} if last else {}),
            "cumulative": {k: round(v, 4) for k, v in self.timing.items()},
            "restarts": self.restarts, "task": self.config.task, "secure_aggregation": self.config.secure_aggregation,
            "epsilon": self.ledger.epsilon() if self.ledger is not None else None,
            "dp": self.config.dp, "dp_delta": self.config.dp_delta if self.ledger is not None else None,
            "dp_budget": self.config.dp_epsilon, "releases": len(self.ledger.releases) if self.ledger else 0,
            "exclusion_reasons": dict(st.exclusion_reasons), "time": time.time(),
        }
        if self.budget_exhausted:
            fields["state"] = "budget_exhausted"
        self.hooks.status(fields)
        return fields

    def _publish_status(self) -> None:
        fields = self.status_fields()
        if self.transport is None or getattr(self.transport, "closed", False):
            self._write_status_file(fields)
            return
        try:
            data = seal_status(self.identity, self.config.federation, self.machine.round, fields)
            self.transport.publish_status(data)
        except Exception as exc:
            log.warning("status publication failed: %s", exc)
        self._write_status_file(fields)

    def _write_status_file(self, fields: dict[str, Any] | None = None) -> None:
        if self.machine is None:
            return
        fields = fields or self.status_fields()
        fields = dict(fields)
        fields["history"], fields["history_peers"] = history_to_json(self.history)
        atomic_write(self.config.status_path, json.dumps(fields, default=json_default).encode(), mode=0o644)
