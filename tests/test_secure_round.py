"""The masked round (secure aggregation, mode A) in the state machine and the simulator.

Oracles: with identity local steps, x_j^{r+1/2} = x_j^r, so each aggregator's committed model must be
bit-for-bit (1 - sum W) x_i + dec(sum_j enc(W_ij x_j)) over the contributors it reports: the masks
cancel exactly on the ring, whatever dropped out on the way.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregation import mh_weight
from fednode.gossip import secagg
from fednode.gossip.config import RoundConfig
from fednode.gossip.events import Abort, Commit, LocalStepDone, MessageReceived, Rejected, Send
from fednode.gossip.round import GossipNode
from fednode.security.arrays import ModelSpec
from fednode.security.envelope import MsgType, seal
from fednode.security.identity import AllowList
from fednode.security.ring import decode, encode, ring_sum
from fednode.testnet.simulator import NetworkConditions, Simulator, identity_from_seed

T0 = 1_800_000_000.0


def _secure_cfg(**kw) -> RoundConfig:
    base = dict(federation="sim", t_hello=1.0, t_agg=1.0, t_commit=1.0, secure_aggregation="retry")
    base.update(kw)
    return RoundConfig(**base)


def _recording_sim(n: int, cfg: RoundConfig, seed: int = 0, dim: int = 40, **kw):
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(n, dim)) * 3
    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i].copy()} for i in range(n)], seed=seed, **kw)
    log: list[tuple[int, object, float]] = []
    orig = sim._apply

    def apply(rec, actions):
        for a in actions:
            if isinstance(a, (Commit, Abort, Send)):
                log.append((rec.index, a, sim.now))
        return orig(rec, actions)

    sim._apply = apply  # type: ignore[method-assign]
    return sim, X0, log


def _start_vectors(sim: Simulator, X0: np.ndarray, rnd: int) -> dict[int, np.ndarray]:
    return {i: X0[i] for i in range(len(X0))} if rnd == 0 else sim.models_by_round[rnd - 1]


def _expected(sim: Simulator, X0: np.ndarray, idx: int, commit: Commit) -> np.ndarray:
    """(1 - sum W) x_i + dec(ring sum of enc(W_ij x_j)) over the reported contributors."""
    start = _start_vectors(sim, X0, commit.round)
    by_id = {p: i for i, p in enumerate(sim.peer_ids)}
    parts = [encode(start[by_id[p]] * w) for p, w in sorted(commit.weights.items())]
    total = decode(ring_sum(parts))
    return (1.0 - sum(commit.weights.values())) * start[idx] + total


def _check_exact(sim, X0, log) -> int:
    commits = 0
    for idx, action, _ in log:
        if isinstance(action, Commit):
            got = sim.spec.flatten(action.model)
            assert np.array_equal(got, _expected(sim, X0, idx, action)), (idx, action.round)
            commits += 1
    return commits


@pytest.mark.parametrize("mode", ["retry", "secagg+"])
@pytest.mark.parametrize("n", [4, 6, 9, 12])
def test_masked_rounds_equal_the_exact_ring_sum_and_keep_the_mean(n, mode):
    cfg = _secure_cfg(max_rounds=4, degree=min(n - 1, 11), secure_aggregation=mode)
    sim, X0, log = _recording_sim(n, cfg, seed=n)
    sim.run()
    assert _check_exact(sim, X0, log) == n * 4
    final = np.stack([v for _, v in sorted(sim.final_vectors().items())])
    assert np.abs(final.mean(0) - X0.mean(0)).max() <= 4 * n * 2.0 ** -33 * 10
    assert np.linalg.norm(final - final.mean(0)) < 0.5 * np.linalg.norm(X0 - X0.mean(0))
    # nothing but masked '<u8' contributions went out, one per (contributor, aggregator, round)
    contributes = [a for _, a, _ in log if isinstance(a, Send) and a.kind == "contribute"]
    assert len(contributes) == n * (n - 1) * 4
    assert not any(isinstance(a, Send) and a.kind == "model_reply" for _, a, _ in log)


def test_masked_contribution_on_the_wire_is_not_the_model():
    cfg = _secure_cfg(max_rounds=1)
    sim, X0, log = _recording_sim(5, cfg, seed=3, dim=4096)
    captured = []
    orig = sim._deliver

    def deliver(sender, target, data):
        captured.append((sender, target, data))
        return orig(sender, target, data)

    sim._deliver = deliver  # type: ignore[method-assign]
    sim.run()
    from fednode.security.envelope import VerifyContext, open_envelope
    from fednode.security.replay import ReplayGuard
    seen = 0
    for sender, target, data in captured:
        ctx = VerifyContext(self_id=sim.peer_ids[target], federation="sim", allow_list=sim.allow_list,
                            current_round=0, now_ms=int(T0 * 1000), replay=ReplayGuard(),
                            model_spec=sim.spec, allowed_payload_dtypes=frozenset({"<u8"}),
                            timestamp_window_ms=10**9)
        msg = open_envelope(data, ctx)
        if getattr(msg, "msg_type", None) != MsgType.CONTRIBUTE:
            continue
        y = msg.arrays["w"]
        plain = encode(X0[sender] * mh_weight(4, 4))
        assert y.dtype == np.uint64 and not np.array_equal(y, plain)
        top = (y >> np.uint64(56)).astype(np.int64)
        counts = np.bincount(top, minlength=256)
        from scipy.stats import chisquare  # scikit-learn depends on scipy
        assert chisquare(counts).pvalue > 1e-6
        corr = np.corrcoef(decode(y), X0[sender])[0, 1]
        assert abs(corr) < 0.1
        seen += 1
    assert seen == 5 * 4


@settings(max_examples=12, deadline=None)
@given(n=st.integers(4, 8), victim=st.integers(0, 7), crash_at=st.floats(0.05, 0.13), seed=st.integers(0, 10),
       mode=st.sampled_from(["retry", "secagg+"]))
def test_a_contributor_killed_mid_round_neither_stalls_nor_corrupts(n, victim, crash_at, seed, mode):
    victim %= n
    cfg = _secure_cfg(max_rounds=2, secure_aggregation=mode)
    sim, X0, log = _recording_sim(n, cfg, seed=seed, crashes={victim: crash_at})
    sim.run(until=30)
    live = [rec for rec in sim.nodes if rec.index != victim]
    for rec in live:
        assert [r for r, _, _ in rec.round_ends] == [0, 1], rec.round_ends
    _check_exact(sim, X0, log)
    bound = (cfg.max_retries + 1) * cfg.t_agg
    for idx, action, _ in log:
        if isinstance(action, (Commit, Abort)) and idx != victim:
            assert action.stats.aggregate_s <= bound + 1e-9
            if isinstance(action, Commit) and n - 1 >= 4:
                assert sim.peer_ids[victim] not in action.used or action.round == 0


def test_dropout_before_contributing_retries_over_survivors():
    cfg = _secure_cfg(max_rounds=1)
    # node 5's link dies silently after its SETUPs (no liveliness news): the others wait t_agg and retry
    sim, X0, log = _recording_sim(6, cfg, seed=1, crashes={5: 0.055},
                                  conditions=NetworkConditions(membership_delay=100.0))
    sim.run(until=30)
    commits = [(i, a) for i, a, _ in log if isinstance(a, Commit)]
    assert len(commits) == 5
    for idx, c in commits:
        assert sim.peer_ids[5] not in c.used and len(c.used) == 4
        assert c.stats.attempts == 2
        assert cfg.t_agg <= c.stats.aggregate_s <= 2 * cfg.t_agg
    _check_exact(sim, X0, log)


@pytest.mark.parametrize("mode", ["retry", "secagg+"])
def test_neighbourhood_below_u_min_keeps_the_own_model_and_sends_nothing_in_clear(mode):
    cfg = _secure_cfg(max_rounds=2, secure_aggregation=mode)
    sim, X0, log = _recording_sim(3, cfg, seed=2)
    sim.run()
    for idx, action, _ in log:
        if isinstance(action, Send):
            assert action.kind not in ("contribute", "model_reply")
        if isinstance(action, (Commit, Abort)):
            assert isinstance(action, Abort) and action.reason == "neighbourhood_below_u_min"
            assert np.array_equal(sim.spec.flatten(action.model), X0[idx])


def test_secagg_plus_recovers_a_dropout_after_masking_without_a_retry():
    """Mode B: a contributor that dies after sending its masked input costs no retry; its dangling
    pairwise masks are removed with its reconstructed key, and the sum is the survivors' exact sum."""
    cfg = _secure_cfg(max_rounds=2, secure_aggregation="secagg+")
    sim, X0, log = _recording_sim(7, cfg, seed=4)
    sends = []
    orig = sim._apply

    def apply(rec, actions):
        for a in actions:
            if isinstance(a, Send) and rec.index == 6 and a.kind == "contribute":
                sends.append(sim.now)
        return orig(rec, actions)

    sim._apply = apply  # type: ignore[method-assign]
    # run until node 6 has sent one masked input, then kill it silently (no liveliness news for 100 s)
    sim.conditions = NetworkConditions(membership_delay=100.0)
    for _ in range(100_000):  # one event at a time until its first masked input is out
        if sends:
            break
        at, _, idx, item = sim._pop()
        sim.now = at
        sim._step(idx, item)
    assert sends
    sim._step(6, "crash")
    sim.run(until=60)
    commits = [(i, a) for i, a, _ in log if isinstance(a, Commit) and a.round == 0 and i != 6]
    assert len(commits) == 6
    recovered = 0
    for idx, c in commits:
        assert c.stats.attempts == 1
        recovered += sim.peer_ids[6] not in c.used
    assert recovered >= 1  # at least one aggregator had to cancel node 6's dangling masks from key shares
    _check_exact(sim, X0, log)


# ---------------------------------------------------------------------------- contributor's checks


class _Federation:
    """Five real machines; node 0 is the aggregator whose SETUPs we forge, node 1 the contributor."""

    def __init__(self, n: int = 5, **kw):
        self.ids = [identity_from_seed(bytes([40 + i])) for i in range(n)]
        self.allow = AllowList()
        for ident in self.ids:
            self.allow.add(ident.public_key_bytes)
        self.spec = ModelSpec((("w", "<f8", (8,)),))
        self.cfg = _secure_cfg(**kw)
        self.m = [GossipNode(ident, self.allow, self.spec, {"w": np.full(8, float(i))}, self.cfg,
                             members=[o.peer_id for o in self.ids if o is not ident])
                  for i, ident in enumerate(self.ids)]
        self.hellos_to_0: dict[bytes, bytes] = {}
        for i, machine in enumerate(self.m):
            for a in machine.start(T0):
                if isinstance(a, Send) and a.kind == "hello" and a.peer == self.ids[0].peer_id:
                    self.hellos_to_0.setdefault(self.ids[i].peer_id, a.data)
        contributor = self.m[1]
        contributor.handle(MessageReceived(self._hello_from_0(), T0 + 0.01))
        contributor.handle(LocalStepDone(0, {"w": np.full(8, 1.0)}, T0 + 0.02))

    def _hello_from_0(self) -> bytes:
        return seal(self.ids[0], msg_type=MsgType.HELLO, recipient=self.ids[1].peer_id, federation="sim", round=0,
                    meta={"n": sorted(o.peer_id for o in self.ids[1:]), "d": 4, "epk": b"\x09" * 32},
                    now_ms=int(T0 * 1000))

    def setup(self, members, *, attempt: int = 0, n=None, msg_type=MsgType.SETUP) -> list:
        ids = [self.ids[i].peer_id for i in members]
        meta = {"u": sorted(ids), "n": sorted(n or [o.peer_id for o in self.ids[1:]]), "d": 4,
                "h": [self.hellos_to_0[p] for p in sorted(ids) if p in self.hellos_to_0]}
        data = seal(self.ids[0], msg_type=msg_type, recipient=self.ids[1].peer_id, federation="sim", round=0,
                    attempt=attempt, meta=meta, now_ms=int(T0 * 1000) + 50 + attempt)
        return self.m[1].handle(MessageReceived(data, T0 + 0.05 + attempt * 0.01))

    def unmask(self, members, attempt: int) -> list:
        ids = sorted(self.ids[i].peer_id for i in members)
        data = seal(self.ids[0], msg_type=MsgType.UNMASK, recipient=self.ids[1].peer_id, federation="sim", round=0,
                    attempt=attempt, meta={"u": ids}, now_ms=int(T0 * 1000) + 90 + attempt)
        return self.m[1].handle(MessageReceived(data, T0 + 0.09))


def _sent(actions, kind):
    return [a for a in actions if isinstance(a, Send) and a.kind == kind]


def _refusals(actions):
    return [a.detail for a in actions if isinstance(a, Rejected) and a.reason == "bad_setup"]


def test_contributor_masks_for_a_valid_setup():
    fed = _Federation()
    out = fed.setup([1, 2, 3, 4])
    assert len(_sent(out, "contribute")) == 1 and not _refusals(out)


def test_contributor_refuses_a_set_smaller_than_u_min():
    fed = _Federation()
    out = fed.setup([1, 2])
    assert _refusals(out) == ["bad_contributor_set"] and not _sent(out, "contribute")


def test_contributor_refuses_a_set_outside_the_aggregators_neighbours():
    fed = _Federation(n=6)
    # node 5 is not in the neighbour list node 0 signed in its HELLO to us
    out = fed.setup([1, 2, 3, 5], n=[fed.ids[i].peer_id for i in (1, 2, 3, 4)])
    assert _refusals(out) == ["not_subset_of_neighbours"]


def test_contributor_refuses_an_attempt_above_a_max():
    fed = _Federation()
    out = fed.setup([1, 2, 3, 4], attempt=fed.cfg.max_retries + 1, msg_type=MsgType.RETRY)
    assert _refusals(out) == ["attempt_above_max"]


def test_contributor_refuses_a_retry_that_adds_members():
    fed = _Federation()
    assert _sent(fed.setup([1, 2, 3]), "contribute")
    out = fed.setup([1, 2, 3, 4], attempt=1, msg_type=MsgType.RETRY)
    assert _refusals(out) == ["retry_not_subset"]


def test_a_superseded_attempt_is_never_revealed():
    """A late attempt-0 contribution plus an attempt-1 sum would expose the dropped value: the
    contributor reveals only the self-mask of the attempt it answered last."""
    fed = _Federation()
    assert _sent(fed.setup([1, 2, 3, 4]), "contribute")
    assert _sent(fed.setup([1, 2, 3], attempt=1, msg_type=MsgType.RETRY), "contribute")
    out = fed.unmask([1, 2, 3, 4], attempt=0)
    assert not _sent(out, "reveal") and any(isinstance(a, Rejected) and a.reason == "bad_unmask" for a in out)
    assert len(_sent(fed.unmask([1, 2, 3], attempt=1), "reveal")) == 1


def test_secure_mode_rejects_plaintext_contributions_and_serves_no_model():
    fed = _Federation()
    plain = seal(fed.ids[2], msg_type=MsgType.CONTRIBUTE, recipient=fed.ids[1].peer_id, federation="sim", round=0,
                 arrays={"w": np.zeros(8)}, meta={"d": 4}, now_ms=int(T0 * 1000))
    out = fed.m[1].handle(MessageReceived(plain, T0 + 0.1))
    assert any(isinstance(a, Rejected) and a.reason == "layout" for a in out)
    req = seal(fed.ids[2], msg_type=MsgType.MODEL_REQUEST, recipient=fed.ids[1].peer_id, federation="sim", round=0,
               now_ms=int(T0 * 1000))
    replies = _sent(fed.m[1].handle(MessageReceived(req, T0 + 0.1)), "model_reply")
    assert len(replies) == 1
    from fednode.security.envelope import VerifyContext, open_envelope
    from fednode.security.replay import ReplayGuard
    msg = open_envelope(replies[0].data, VerifyContext(
        self_id=fed.ids[2].peer_id, federation="sim", allow_list=fed.allow, current_round=0,
        now_ms=int(T0 * 1000), replay=ReplayGuard(), payload_types=frozenset({int(MsgType.CONTRIBUTE)})))
    assert msg.msg_type == MsgType.MODEL_REPLY and msg.arrays == {} and msg.meta["r"] == 0


def test_config_refuses_secure_aggregation_with_robust_aggregators():
    with pytest.raises(ValueError, match="excludes"):
        RoundConfig(federation="x", secure_aggregation="retry", aggregator="median")
    assert RoundConfig(federation="x", secure_aggregation="retry").u_min == 3
    assert RoundConfig(federation="x").u_min == 1


def test_plausibility_check_catches_garbage_sums():
    rng = np.random.default_rng(0)
    garbage = decode(rng.integers(0, 2**63, size=1000, dtype=np.uint64) * np.uint64(2))
    assert not secagg.plausible(garbage, 0.5)
    assert secagg.plausible(np.full(10, 2.0**19), 0.5)
