"""Mixing: the last step of a round, x^{r+1} from x^{r+1/2} and what the neighbours sent.

Plaintext contributions are mixed by :func:`mix_neighbours`, the only place, so the validation-score
filter (``GossipNode.contribution_filter``, injected by the runtime) is applied here; a masked round
only ever has the weighted sum S_i, applied by :func:`apply_masked_sum`. The math itself is in
:mod:`fednode.aggregation` (pure numpy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fednode.aggregation import (adaptive_tau, clipped_gossip, coordinate_median, far_neighbours, mix,
                                 neighbour_distances, trimmed_mean)
from fednode.gossip import secagg
from fednode.gossip.config import RoundConfig
from fednode.security.arrays import Model, ModelSpec

ContributionFilter = Callable[[Model, dict[bytes, Model], dict[bytes, float]], dict[bytes, float]]
"""(own x^{r+1/2}, neighbours' models, W_ij) -> the weights to mix with (dropped peers absent)."""


def mix_neighbours(config: RoundConfig, own: Model, neighbours: dict[bytes, Model], weights: dict[bytes, float],
                   contribution_filter: ContributionFilter | None = None,
                   on_far: Callable[[list[bytes]], None] | None = None) -> Model:
    """x^{r+1} under the configured rule: gossip (Metropolis-Hastings), clipped, median or trimmed mean.

    ClippedGossip's adaptive radius comes from the whole neighbourhood, before the filter drops anyone;
    so does the list of neighbours farther than ``config.far_ratio`` times it, handed to ``on_far``
    (the round machine counts them towards exclusion).
    """
    tau = config.clip_tau
    if config.aggregator == "clipped":
        distances = neighbour_distances(own, neighbours)
        if tau is None:
            tau = adaptive_tau(own, neighbours, weights, distances=distances)
        far = far_neighbours(distances, tau, config.far_ratio) if config.far_ratio else []
        if far and on_far is not None:
            on_far(far)
    if contribution_filter is not None and not config.secure:
        weights = contribution_filter(own, neighbours, weights)
        neighbours = {p: neighbours[p] for p in weights}
    if config.aggregator == "gossip":
        return mix(own, neighbours, weights)
    if config.aggregator == "clipped":
        return clipped_gossip(own, neighbours, weights, tau)
    models = [own, *neighbours.values()]
    if config.aggregator == "median":
        return coordinate_median(models)
    trim = min(config.trim, (len(models) - 1) // 2)
    return trimmed_mean(models, trim)


def apply_masked_sum(own: Model, spec: ModelSpec, total: np.ndarray, weights: dict[bytes, float]) -> Model:
    """x^{r+1} = (1 - sum W_ij) x^{r+1/2} + S_i (secure aggregation)."""
    return secagg.apply_sum(own, spec, total, sum(weights.values()))
