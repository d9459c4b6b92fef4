"""Validation-score filter (plaintext mode): weights from how much each neighbour's mix hurts a held-out loss.

Node i evaluates, on a small held-out slice of its own data, the loss L_0 of its own x_i^{r+1/2} and,
for each neighbour j, the loss L_j of the one-neighbour mix x_i + W_ij (x_j - x_i): exactly the step
plain gossip would take towards j alone. A neighbour whose step makes the loss worse by more than
the tolerance t is dropped; between t/2 and t its weight shrinks linearly; up to t/2 it is kept
(non-IID honest neighbours raise i's local loss a little, and that must not cost them their weight).
t = rel * L_0 + abs_tol. Dropped weight returns to W_ii (the node keeps more of its own model), so
the mix stays a convex combination. Pure arithmetic: the losses come from the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

REL_TOLERANCE = 0.5
ABS_TOLERANCE = 0.02


def tolerance(base_loss: float, rel: float = REL_TOLERANCE, abs_tol: float = ABS_TOLERANCE) -> float:
    return rel * max(0.0, base_loss) + abs_tol


def validation_weights(base_loss: float, mixed_losses: Mapping[Hashable, float], weights: Mapping[Hashable, float],
                       *, rel: float = REL_TOLERANCE, abs_tol: float = ABS_TOLERANCE) -> dict[Hashable, float]:
    """The neighbours' weights after scoring; dropped ones are absent. NaN or missing losses drop."""
    t = tolerance(base_loss, rel, abs_tol)
    out: dict[Hashable, float] = {}
    for peer, w in weights.items():
        loss = mixed_losses.get(peer, math.nan)
        if not math.isfinite(loss) or not math.isfinite(base_loss):
            continue
        worse = loss - base_loss
        if worse <= t / 2:
            out[peer] = w
        elif worse < t:
            out[peer] = w * (t - worse) / (t / 2)
    return out


__all__ = ["ABS_TOLERANCE", "REL_TOLERANCE", "tolerance", "validation_weights"]
