"""Push-sum (Kempe et al. 2003) for directed or lossy links, pure functions over stacked node states.

State per node j: numerator s_j (vector) and weight w_j (scalar), starting at s = x0, w = 1; the estimate
is z_j = s_j / w_j. Each step node j keeps a share 1/(1 + d_j^out) of (s_j, w_j) and sends the same share
to each out-neighbour. Three loss behaviours:

- ``plain``: a lost share is gone (sum of w drifts to 0 under loss; the estimates stay in the convex hull
  but become biased);
- ``readd``: the sender re-adds every share the receiver did not acknowledge (Σs = Σx0 and Σw = n exactly);
- running sums (Vaidya, Hadjicostis, Dominguez-Garcia 2011): senders publish cumulative totals and receivers
  take the difference with the last total they saw, so a lost message is recovered by the next one; the
  mass in flight is explicit and Σs + in-flight = Σx0, Σw + in-flight = n at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PushSumState:
    s: np.ndarray          # (n, d) numerators
    w: np.ndarray          # (n,) weights
    sent_s: np.ndarray     # (n, d) running-sum mode: cumulative share sent by j on each out-edge
    sent_w: np.ndarray     # (n,)
    seen_s: np.ndarray     # (n, n, d) running-sum mode: last cumulative value k received from j ([j, k])
    seen_w: np.ndarray     # (n, n)

    @property
    def estimate(self) -> np.ndarray:
        return self.s / self.w[:, None]


def init_state(X0: np.ndarray) -> PushSumState:
    X0 = np.asarray(X0, dtype=np.float64)
    n, d = X0.shape
    return PushSumState(X0.copy(), np.ones(n), np.zeros((n, d)), np.zeros(n), np.zeros((n, n, d)),
                        np.zeros((n, n)))


def _shares(out_adj: np.ndarray) -> np.ndarray:
    A = np.asarray(out_adj, dtype=bool).copy()
    np.fill_diagonal(A, False)
    return A, 1.0 / (1.0 + A.sum(axis=1))


def step(state: PushSumState, out_adj: np.ndarray, lost: np.ndarray, mode: str = "readd") -> PushSumState:
    """One synchronous step; ``lost[j, k]`` drops j's message to k this step."""
    A, share = _shares(out_adj)
    lost = np.asarray(lost, dtype=bool) & A
    n = len(share)
    s, w = state.s, state.w
    if mode == "running":
        sent_s = state.sent_s + share[:, None] * s
        sent_w = state.sent_w + share * w
        new_s = share[:, None] * s
        new_w = share * w
        seen_s, seen_w = state.seen_s.copy(), state.seen_w.copy()
        for j in range(n):
            for k in np.nonzero(A[j] & ~lost[j])[0]:
                new_s[k] += sent_s[j] - seen_s[j, k]
                new_w[k] += sent_w[j] - seen_w[j, k]
                seen_s[j, k] = sent_s[j]
                seen_w[j, k] = sent_w[j]
        return PushSumState(new_s, new_w, sent_s, sent_w, seen_s, seen_w)
    if mode not in ("plain", "readd"):
        raise ValueError(f"unknown push-sum mode {mode!r}")
    keep = share.copy()
    if mode == "readd":  # unacknowledged shares come back to the sender
        keep = share * (1 + lost.sum(axis=1))
    new_s = keep[:, None] * s
    new_w = keep * w
    delivered = A & ~lost
    new_s += (delivered * share[:, None]).T @ s
    new_w += (delivered * share[:, None]).T @ w
    return PushSumState(new_s, new_w, state.sent_s, state.sent_w, state.seen_s, state.seen_w)


def in_flight(state: PushSumState, out_adj: np.ndarray) -> tuple[np.ndarray, float]:
    """Running-sum mode: mass sent but not yet received, (numerator, weight)."""
    A, _ = _shares(out_adj)
    js, ks = np.nonzero(A)
    num = sum((state.sent_s[j] - state.seen_s[j, k] for j, k in zip(js, ks)), np.zeros(state.s.shape[1]))
    den = float(sum(state.sent_w[j] - state.seen_w[j, k] for j, k in zip(js, ks)))
    return num, den
