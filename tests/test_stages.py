"""The round machine as stages (issue 13): the driver's phase changes stay inside its transition table,
and the stage layout keeps sealing, opening and mixing in one place each."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fednode.gossip import round as round_mod
from fednode.gossip.config import RoundConfig
from fednode.gossip.state import PHASE_TRANSITIONS
from fednode.testnet.simulator import NetworkConditions, Simulator

PKG = Path(__file__).resolve().parent.parent / "fednode"


def _record_transitions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    enter = round_mod.GossipNode._enter

    def recording(self, phase: str) -> None:
        seen.append((self.ctx.phase, phase))
        enter(self, phase)

    monkeypatch.setattr(round_mod.GossipNode, "_enter", recording)
    return seen


@pytest.mark.parametrize("mode", ["off", "retry", "secagg+"])
def test_phase_changes_stay_in_the_transition_table(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    seen = _record_transitions(monkeypatch)
    n, rng = 8, np.random.default_rng(3)
    cfg = RoundConfig(federation="stages", max_rounds=5, degree=4, t_hello=2.0, t_agg=1.0, t_commit=1.0,
                      secure_aggregation=mode)
    sim = Simulator(n, config=cfg, initial_models=[{"w": rng.normal(size=5)} for _ in range(n)],
                    local_step=lambda i, m: {k: v * 0.9 for k, v in m.items()},
                    conditions=NetworkConditions(loss=0.05, jitter=0.02), seed=5, train_time=0.1,
                    crashes={2: 1.5}, late_joiners={7: 4.0})
    sim.run(until=600)
    assert seen, "no phase change recorded"
    bad = sorted({(a, b) for a, b in seen if b not in PHASE_TRANSITIONS[a]})
    assert bad == []
    assert {b for _, b in seen} >= {"aggregate", "commit", "train"}


def test_the_transition_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_transitions(monkeypatch)
    ids_cfg = RoundConfig(federation="stages", max_rounds=1)
    from fednode.security.arrays import ModelSpec
    from fednode.security.identity import AllowList
    from fednode.testnet.simulator import identity_from_seed
    ident = identity_from_seed(b"\x01")
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    node = round_mod.GossipNode(ident, allow, ModelSpec((("w", "<f8", (2,)),)), {"w": np.zeros(2)}, ids_cfg)
    node.phase = "commit"  # TRAIN -> COMMITTING is not a transition the driver makes
    assert [(a, b) for a, b in seen if b not in PHASE_TRANSITIONS[a]] == [("train", "commit")]


def _calls(path: Path, names: set[str]) -> list[str]:
    """Direct calls of the library functions ``names`` (``seal(...)``, not ``outbox.seal(...)``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.func.id for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names]


def test_sealing_opening_and_mixing_each_live_in_one_module() -> None:
    gossip = sorted(p for p in (PKG / "gossip").rglob("*.py") if "transports" not in p.parts)
    names = ("seal", "open_envelope", "mix", "clipped_gossip", "trimmed_mean", "coordinate_median")
    where = {name: sorted(str(p.relative_to(PKG)) for p in gossip if name in _calls(p, {name})) for name in names}
    assert where["seal"] == ["gossip/status.py"]  # the signed STATUS; round messages go through the codec
    assert where["open_envelope"] == ["gossip/secagg.py", "gossip/status.py"]  # relayed HELLOs; STATUS
    for rule in ("mix", "clipped_gossip", "trimmed_mean", "coordinate_median"):
        assert where[rule] == ["gossip/mix.py"], (rule, where[rule])
    codec = {op: sorted(str(p.relative_to(PKG)) for p in gossip if f"codec.{op}(" in p.read_text(encoding="utf-8"))
             for op in ("seal", "open")}
    assert codec == {"seal": ["gossip/outbox.py"], "open": ["gossip/inbox.py"]}


def test_no_module_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(PKG)): len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.rglob("*.py")}
    gossip = {k: v for k, v in sizes.items() if k.startswith("gossip/")}
    assert max(gossip.values()) <= 400, sorted(gossip.items(), key=lambda kv: -kv[1])[:3]
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]  # the house hard limit
