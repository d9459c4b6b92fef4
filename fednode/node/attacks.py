"""Byzantine attacks for fault injection: pure numpy transforms of an attacker's outgoing x^{r+1/2}.

An attacker is an admitted node that follows the protocol (valid signatures, HELLO, COMMIT,
retries) and lies only in the model it contributes. Each attack maps what an honest node would
send, and what an admitted member legitimately knows, to the poisoned model:

- ``base``: the attacker's x^r, ``half``: its honest x^{r+1/2} (so ``half - base`` is its update);
- ``observed``: the contributions its neighbours sent *it* in the previous round (the only view
  of the honest models a member gets; ALIE and IPM estimate the honest mean and spread from it);
- ``history``: its own earlier honest halves (``stale`` replays the oldest).

Attacks (the scales are the module constants below; ``scale`` overrides the one of the attack):

- ``signflip``: base - S (half - base): the update negated and scaled by S = 4.
- ``gaussian``: half + N(0, sigma^2) per coordinate, sigma = 1 (a norm of ~160 for the digits MLP).
- ``alie``: "a little is enough" (Baruah et al. 2019): mu - z sigma per coordinate over ``observed``,
  z = 1.5: inside the spread of honest values, so outlier filters keep it.
- ``ipm``: inner-product manipulation (Xie et al. 2020): base - eps (mu - base), eps = 0.5: the
  opposite of the honest mean update.
- ``stale``: the attacker's first honest x^{1/2}, re-sent every round with fresh signatures.
- ``nan``, ``inf``: a quarter of the coordinates NaN or +-Inf; ``oversize``: |x| = 2^21 on a
  quarter of the coordinates, beyond the B_max = 2^20 bound. Receivers must reject these three
  (non_finite, magnitude) before they touch any model.

Without observations (round 0, or no neighbour yet) ALIE and IPM fall back to the attacker's own
half as the mean and zero spread. Everything is deterministic given ``rng``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fednode.security.arrays import Model

ATTACKS = ("signflip", "gaussian", "alie", "ipm", "stale", "nan", "inf", "oversize")
"""Every attack ``fednode testnet --attack`` accepts."""

WIRE_REJECTED = frozenset({"nan", "inf", "oversize"})
"""Attacks whose contributions every receiver must refuse on verification (never aggregated)."""

SIGNFLIP_SCALE = 4.0
GAUSSIAN_SIGMA = 1.0
ALIE_Z = 1.5
IPM_EPS = 0.5
OVERSIZE_VALUE = 2.0 ** 21
POISON_FRACTION = 0.25


def _f64(m: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in m.items()}


def _cast(m: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> Model:
    return {k: np.asarray(m[k]).astype(np.asarray(like[k]).dtype) for k in like}


def honest_statistics(half: Mapping[str, np.ndarray], observed: Sequence[Mapping[str, np.ndarray]]
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Coordinate-wise mean and standard deviation of the observed contributions (own half if none)."""
    if not observed:
        h = _f64(half)
        return h, {k: np.zeros_like(v) for k, v in h.items()}
    mu, sd = {}, {}
    for k in half:
        stack = np.stack([np.asarray(o[k], dtype=np.float64) for o in observed])
        mu[k] = stack.mean(axis=0)
        sd[k] = stack.std(axis=0)
    return mu, sd


def _poison_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    mask = rng.random(shape) < POISON_FRACTION
    if mask.size and not mask.any():
        mask.reshape(-1)[0] = True
    return mask


def apply_attack(name: str, *, base: Mapping[str, np.ndarray], half: Mapping[str, np.ndarray],
                 observed: Sequence[Mapping[str, np.ndarray]] = (), history: Sequence[Mapping[str, np.ndarray]] = (),
                 rng: np.random.Generator, scale: float | None = None) -> Model:
    """The poisoned x^{r+1/2} of attack ``name`` (ValueError for an unknown one). Inputs are not modified."""
    b, h = _f64(base), _f64(half)
    if name == "signflip":
        s = SIGNFLIP_SCALE if scale is None else scale
        out = {k: b[k] - s * (h[k] - b[k]) for k in h}
    elif name == "gaussian":
        s = GAUSSIAN_SIGMA if scale is None else scale
        out = {k: h[k] + rng.normal(0.0, s, size=h[k].shape) for k in h}
    elif name == "alie":
        z = ALIE_Z if scale is None else scale
        mu, sd = honest_statistics(half, observed)
        out = {k: mu[k] - z * sd[k] for k in h}
    elif name == "ipm":
        eps = IPM_EPS if scale is None else scale
        mu, _ = honest_statistics(half, observed)
        out = {k: b[k] - eps * (mu[k] - b[k]) for k in h}
    elif name == "stale":
        out = _f64(history[0]) if history else h
    elif name in ("nan", "inf", "oversize"):
        out = {}
        for k, v in h.items():
            mask = _poison_mask(v.shape, rng)
            if name == "nan":
                bad = np.nan
            elif name == "inf":
                bad = np.where(rng.random(v.shape) < 0.5, np.inf, -np.inf)
            else:
                bad = np.where(v >= 0, OVERSIZE_VALUE, -OVERSIZE_VALUE)
            out[k] = np.where(mask, bad, v)
    else:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    with np.errstate(invalid="ignore", over="ignore"):
        return _cast(out, half)


__all__ = ["ATTACKS", "WIRE_REJECTED", "apply_attack", "honest_statistics"]
