"""The local step's result becomes x^{r+1/2}: checked against the spec, then the update is clipped.

First step after training in the flow train -> clip -> noise -> encode -> mask -> sign -> send ->
verify -> unmask -> mix (docs/protocol.md). A bad step never reaches a neighbour: the node keeps x^r.
"""

from __future__ import annotations

import numpy as np

from fednode.security.arrays import Model, ModelSpec
from fednode.security.clipping import clip_by_global_norm


def accept_local_step(spec: ModelSpec, base: Model, model: Model, update_clip: float | None
                      ) -> tuple[Model | None, str | None]:
    """(x^{r+1/2}, None), or (None, reason) when the step has the wrong layout or non-finite values.

    With ``update_clip`` C the update x^{r+1/2} - x^r is clipped to L2 norm C (PROTOCOL §1 step 1).
    """
    if not spec.matches(model):
        return None, "bad_local_step_layout"
    half = {k: np.array(v, copy=True) for k, v in model.items()}
    if not all(_finite(v) for v in half.values()):  # on the copy: it is in cache now
        return None, "bad_local_step_non_finite"
    if update_clip is not None:
        delta = {k: half[k].astype(np.float64) - base[k].astype(np.float64) for k in half}
        clipped, _norm = clip_by_global_norm(delta, update_clip)
        half = {k: (base[k].astype(np.float64) + clipped[k]).astype(half[k].dtype) for k in half}
    return half, None


def _finite(v: np.ndarray) -> bool:
    """Every value finite. A float sum is finite only if every term is (NaN and inf propagate), so one
    reduction without a temporary decides the common case; an overflowing sum of finite values falls
    back to the element-wise test."""
    if v.dtype.kind == "f":
        with np.errstate(all="ignore"):  # the overflow of a huge finite sum is not an error here
            if np.isfinite(np.add.reduce(v, axis=None)):
                return True
    return bool(np.isfinite(v).all())
