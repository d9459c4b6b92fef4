"""The validation-score filter's evaluator: a held-out slice of the node's own shard and a jitted loss.

The round machine must not import JAX, so the runtime injects :class:`ValidationFilter` into it
(``GossipNode.contribution_filter``); the decision itself is the pure
:func:`fednode.aggregation.validation.validation_weights`. The slice is taken out of the training
shard (it is never trained on), so the score measures generalisation on the node's own
distribution. Cost per round: 1 + |neighbours| loss evaluations on the slice (measured in
``stats``: calls, seconds, dropped and down-weighted neighbours).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fednode.aggregation.validation import validation_weights
from fednode.security.arrays import Model

MIN_HOLDOUT = 16
MAX_HOLDOUT = 64


class ValidationFilter:
    """Holds out a slice of ``trainer``'s shard and scores neighbours' contributions on it."""

    def __init__(self, trainer, fraction: float = 0.2) -> None:
        n = len(trainer.y)
        k = int(min(MAX_HOLDOUT, max(MIN_HOLDOUT, round(fraction * n))))
        k = min(k, max(0, n - 1))
        rng = np.random.default_rng([trainer.seed, trainer.node_index, 2718])
        perm = rng.permutation(n)
        held, kept = perm[:k], perm[k:]
        self.x, self.y = np.asarray(trainer.x[held]), np.asarray(trainer.y[held])
        trainer.x, trainer.y = trainer.x[kept], trainer.y[kept]
        trainer.batch_size = min(trainer.batch_size, len(trainer.y))
        trainer.steps_per_round = max(1, math.ceil(trainer.steps_per_round * len(kept) / max(1, n)))
        loss_fn = trainer._loss_fn
        self._loss = jax.jit(lambda p, xb, yb: loss_fn(p, xb, yb))
        self.dropped_peers: dict[str, int] = {}
        self.stats = {"holdout": int(k), "calls": 0, "seconds": 0.0, "scored": 0, "dropped": 0, "downweighted": 0}

    def loss(self, model: Mapping[str, np.ndarray]) -> float:
        p = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in model.items()}
        with np.errstate(all="ignore"):
            return float(self._loss(p, jnp.asarray(self.x), jnp.asarray(self.y)))

    def warmup(self, model: Mapping[str, np.ndarray]) -> None:
        self.loss(model)

    def __call__(self, own: Model, neighbours: Mapping[Hashable, Model],
                 weights: Mapping[Hashable, float]) -> dict[Hashable, float]:
        t0 = time.perf_counter()
        base = self.loss(own)
        mixed = {}
        for peer, w in weights.items():
            x = neighbours[peer]
            with np.errstate(all="ignore"):
                step = {k: (own[k].astype(np.float64) + w * (x[k].astype(np.float64) - own[k].astype(np.float64)))
                        .astype(np.float32) for k in own}
            mixed[peer] = self.loss(step)
        out = validation_weights(base, mixed, weights)
        s = self.stats
        s["calls"] += 1
        s["seconds"] += time.perf_counter() - t0
        s["scored"] += len(weights)
        s["dropped"] += len(weights) - len(out)
        s["downweighted"] += sum(1 for p in out if out[p] < weights[p])
        for p in weights:
            if p not in out and isinstance(p, bytes):
                short = p.hex()[:12]
                self.dropped_peers[short] = self.dropped_peers.get(short, 0) + 1
        return out

    def summary(self) -> dict:
        s = dict(self.stats)
        s["ms_per_round"] = round(1000 * s["seconds"] / s["calls"], 3) if s["calls"] else None
        s["seconds"] = round(s["seconds"], 4)
        s["dropped_peers"] = dict(self.dropped_peers)
        return s
