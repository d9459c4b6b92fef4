"""L2 clipping of a whole update (all named arrays together): robustness and the DP sensitivity bound."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fednode.security.arrays import Model


def l2_norm(model: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over every array, computed in float64."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in model.values()))


def clip_by_global_norm(update: Mapping[str, np.ndarray], bound: float) -> tuple[Model, float]:
    """(Delta * min(1, C / ||Delta||), ||Delta||): identity when ||Delta|| <= C; the zero update is safe."""
    if not bound > 0:
        raise ValueError("clip bound must be > 0")
    norm = l2_norm(update)
    scale = 1.0 if norm <= bound else bound / norm
    return ({k: (np.asarray(v, dtype=np.float64) * scale).astype(np.asarray(v).dtype) for k, v in update.items()},
            norm)
