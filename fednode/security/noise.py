"""Differential-privacy noise: OS-seeded generators and the Gaussian mechanism on named models.

Every generator here is seeded from the operating system's CSPRNG (PROTOCOL §4): noise that a
peer could predict protects nothing, so there is deliberately no way to pass a seed in production
code paths. Tests that need reproducibility pass their own ``numpy.random.Generator``.

Three uses, one mechanism (N(0, sigma^2) per coordinate):

* local DP: the node adds N(0, z^2 C^2) to its clipped update before anything derived from it leaves;
* DP-SGD noise inside the trainer is drawn by JAX from a key made by :func:`jax_seed` (the trainer is
  the only JAX user);
* distributed DP under secure aggregation: each contributor adds a share N(0, sigma_share^2) with
  sigma_share = z C / sqrt(|U| - c) (:func:`distributed_sigma`) before ring encoding, so the honest
  shares in the aggregator's sum add up to at least z C (times the mixing weight) while no single
  contribution carries enough noise on its own.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import numpy as np

from fednode.security.arrays import Model
from fednode.security.clipping import clip_by_global_norm


def make_rng() -> np.random.Generator:
    """A fresh PCG64 generator seeded with 128 bits from the OS CSPRNG."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))


def jax_seed() -> int:
    """A 63-bit seed from the OS CSPRNG for a JAX PRNG key (DP-SGD noise inside the trainer)."""
    return secrets.randbits(63)


def gaussian_like(model: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> Model:
    """Independent N(0, std^2) noise with the names and shapes of ``model`` (float64)."""
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError("noise std must be finite and >= 0")
    return {k: rng.normal(0.0, std, size=np.shape(v)) for k, v in sorted(model.items())}


def add_gaussian(update: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> Model:
    """``update + N(0, std^2 I)`` in float64 (the input is not modified)."""
    noise = gaussian_like(update, std, rng)
    return {k: np.asarray(update[k], dtype=np.float64) + noise[k] for k in noise}


def privatize_update(update: Mapping[str, np.ndarray], *, clip: float, noise_multiplier: float,
                     rng: np.random.Generator) -> tuple[Model, float]:
    """Local DP on one round's update: clip to L2 norm ``clip``, add N(0, (z C)^2). Returns the noised
    update and the update's norm before clipping (for logs; it is not released)."""
    if not clip > 0:
        raise ValueError("clip must be > 0")
    if not noise_multiplier > 0:
        raise ValueError("noise multiplier must be > 0")
    clipped, norm = clip_by_global_norm(update, clip)
    return add_gaussian(clipped, noise_multiplier * clip, rng), norm


def distributed_sigma(noise_multiplier: float, clip: float, contributors: int, colluders: int) -> float:
    """sigma_share = z C / sqrt(|U| - c): the honest shares of |U| - c contributors sum to variance (z C)^2.

    The sigma is in parameter units, before the contributor's mixing weight W_ij scales its value;
    with equal weights the noise in S_i = sum W x is then z C W, the Gaussian mechanism for one
    contribution of norm C scaled by W (PROTOCOL §4). Refuses c >= |U| (no honest share left).
    """
    if contributors < 1 or colluders < 0 or colluders >= contributors:
        raise ValueError("need 0 <= colluders < contributors")
    if not (noise_multiplier > 0 and clip > 0):
        raise ValueError("noise multiplier and clip must be > 0")
    return noise_multiplier * clip / math.sqrt(contributors - colluders)


__all__ = ["add_gaussian", "distributed_sigma", "gaussian_like", "jax_seed", "make_rng", "privatize_update"]
