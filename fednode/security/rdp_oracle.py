"""Independent subsampled-Gaussian RDP at integer orders: the test oracle for the accountant.

Mironov, Talwar, Zhang (arXiv 1908.10530), integer alpha:
    log A_alpha = logsumexp_k [log C(alpha, k) + k log q + (alpha - k) log(1 - q) + (k^2 - k) / (2 sigma^2)]
    RDP(alpha) = log A_alpha / (alpha - 1);   q = 1: alpha / (2 sigma^2);   T steps compose by multiplication.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def rdp_subsampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of one Poisson-subsampled Gaussian step at integer order ``alpha`` >= 2."""
    if not (0 < q <= 1) or sigma <= 0 or alpha < 2 or int(alpha) != alpha:
        raise ValueError("need 0 < q <= 1, sigma > 0 and integer alpha >= 2")
    alpha = int(alpha)
    if q == 1.0:
        return alpha / (2 * sigma**2)
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1) + k * math.log(q)
             + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2) for k in range(alpha + 1)]
    return _logsumexp(terms) / (alpha - 1)


def compute_rdp(q: float, sigma: float, steps: int, orders: Iterable[int]) -> list[float]:
    return [steps * rdp_subsampled_gaussian(q, sigma, a) for a in orders]


def epsilon_classic(q: float, sigma: float, steps: int, delta: float, orders: Iterable[int] = range(2, 257)) -> float:
    """Classic conversion (Abadi et al.; Mironov 2017): min over alpha of RDP + log(1/delta)/(alpha - 1)."""
    return min(r + math.log(1 / delta) / (a - 1) for a, r in zip(orders, compute_rdp(q, sigma, steps, orders)))
