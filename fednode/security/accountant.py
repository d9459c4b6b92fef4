"""Privacy accounting with dp-accounting (RDP and PLD) for (sub)sampled Gaussian releases.

Node-level local DP is a Gaussian release per round with q = 1 (neighbours see every participation);
example-level DP-SGD is a Poisson-subsampled Gaussian per local step (q = batch / shard). Both are
composed with ``SelfComposedDpEvent``; epsilon is reported at a fixed delta from both accountants.
"""

from __future__ import annotations

from dp_accounting import dp_event, rdp
from dp_accounting.pld import pld_privacy_accountant

PLD_DISCRETIZATION = 1e-4
RDP_ORDERS = tuple(float(a) for a in range(2, 64)) + (128.0, 256.0, 512.0, 1024.0)
"""Integer Renyi orders only. dp-accounting's default list adds fractional orders 1.1-10.9 whose series
(``_compute_log_a_frac``) fails to converge for large q and small z; the accountant then drops those
orders, which keeps epsilon an upper bound but makes it go *down* when q or the number of steps grows
(measured: z = 0.6, q 0.42 -> 0.44 gave 115.8 -> 111.6). Integer orders use the closed form, are
monotone, and cost under 1% of epsilon at the settings we ship (z = 1.1, q = 0.01, 1000 steps: 1.712 -> 1.725)."""


def make_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_event.DpEvent:
    if not noise_multiplier > 0:
        raise ValueError("noise multiplier must be > 0")
    if not 0 < sampling_rate <= 1:
        raise ValueError("sampling rate must be in (0, 1]")
    if steps < 0 or int(steps) != steps:
        raise ValueError("steps must be a non-negative integer")
    base = dp_event.GaussianDpEvent(noise_multiplier)
    step = base if sampling_rate >= 1 else dp_event.PoissonSampledDpEvent(sampling_rate, base)
    return dp_event.SelfComposedDpEvent(step, int(steps))


def epsilon_rdp(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(make_event(noise_multiplier, sampling_rate, steps))
    return float(acc.get_epsilon(delta))


def epsilon_pld(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(make_event(noise_multiplier, sampling_rate, steps))
    return float(acc.get_epsilon(delta))


def epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> dict:
    """Epsilon at ``delta`` from both accountants, as `fednode privacy` prints it."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    return {"epsilon_rdp": epsilon_rdp(noise_multiplier, sampling_rate, steps, delta),
            "epsilon_pld": epsilon_pld(noise_multiplier, sampling_rate, steps, delta),
            "delta": delta, "noise_multiplier": noise_multiplier, "sampling_rate": sampling_rate, "steps": steps}


def epsilon_of_releases(events: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of a sequence of (noise multiplier, sampling rate, steps) releases.

    Identical (z, q) releases are grouped into one self-composed event, so a long ledger costs one
    accountant call per distinct mechanism, not per round.
    """
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    groups: dict[tuple[float, float], int] = {}
    for z, q, steps in events:
        groups[(float(z), float(q))] = groups.get((float(z), float(q)), 0) + int(steps)
    composed = dp_event.ComposedDpEvent([make_event(z, q, t) for (z, q), t in sorted(groups.items())])
    if accountant == "rdp":
        acc = rdp.RdpAccountant(list(RDP_ORDERS))
    elif accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    else:
        raise ValueError("accountant must be 'rdp' or 'pld'")
    acc.compose(composed)
    return float(acc.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """Smallest noise multiplier whose epsilon (by ``accountant``) is at most the target (bisection, 1e-4 rel)."""
    if not target_epsilon > 0:
        raise ValueError("target epsilon must be > 0")
    fn = {"rdp": epsilon_rdp, "pld": epsilon_pld}[accountant]
    lo, hi = 1e-3, 1.0
    while fn(hi, sampling_rate, steps, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError("no noise multiplier below 1e6 meets that target")
    while (hi - lo) > 1e-4 * hi:
        mid = (lo + hi) / 2
        if fn(mid, sampling_rate, steps, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
