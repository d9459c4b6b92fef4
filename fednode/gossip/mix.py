"""Mixing: the last step of a round, x^{r+1} from x^{r+1/2} and what the neighbours sent.

Plaintext contributions are mixed by :func:`mix_neighbours` (the only place, so a scoring or
filtering hook goes here); a masked round only ever has the weighted sum S_i, applied by
:func:`apply_masked_sum`. The math itself is in :mod:`fednode.aggregation` (pure numpy).
"""

from __future__ import annotations

import numpy as np

from fednode.aggregation import clipped_gossip, coordinate_median, mix, trimmed_mean
from fednode.gossip import secagg
from fednode.gossip.config import RoundConfig
from fednode.security.arrays import Model, ModelSpec


def mix_neighbours(config: RoundConfig, own: Model, neighbours: dict[bytes, Model],
                   weights: dict[bytes, float]) -> Model:
    """x^{r+1} under the configured rule: gossip (Metropolis-Hastings), clipped, median or trimmed mean."""
    if config.aggregator == "gossip":
        return mix(own, neighbours, weights)
    if config.aggregator == "clipped":
        return clipped_gossip(own, neighbours, weights, config.clip_tau)
    models = [own, *neighbours.values()]
    if config.aggregator == "median":
        return coordinate_median(models)
    trim = min(config.trim, (len(models) - 1) // 2)
    return trimmed_mean(models, trim)


def apply_masked_sum(own: Model, spec: ModelSpec, total: np.ndarray, weights: dict[bytes, float]) -> Model:
    """x^{r+1} = (1 - sum W_ij) x^{r+1/2} + S_i (secure aggregation)."""
    return secagg.apply_sum(own, spec, total, sum(weights.values()))
