"""Every timeout, bound and default of the gossip round, in one place.

Times are seconds of the driver's clock. The round-length bound of PROTOCOL §1 is
``max(T_train, t_hello) + (max_retries + 1) * t_agg + t_commit`` (see
:meth:`RoundConfig.round_length_bound`); no live node ever waits longer for a round.
"""

from __future__ import annotations

from dataclasses import dataclass

AGGREGATORS = ("gossip", "clipped", "trimmed_mean", "median")
SECURE_AGGREGATION_MODES = ("off", "retry", "secagg+")
SECURE_U_MIN = 3
"""With secure aggregation, fewer contributors than this abort: one contributor's masked value carries no
pairwise mask, and with two the aggregator plus one colluder would learn the other's value."""


@dataclass(frozen=True)
class RoundConfig:
    federation: str
    # --- timeouts
    t_hello: float = 5.0
    """Wait at most this long after the round starts for HELLOs of the proposed neighbours (the wait
    ends as soon as all have arrived). Long enough to cover a neighbour still finishing the previous
    round's retries keeps the federation in step; too short and fast nodes race ahead and resync."""
    t_agg: float = 5.0
    """Wait this long for contributions per attempt (PROTOCOL T_agg)."""
    t_commit: float = 2.0
    """After sending COMMIT, wait this long for the COMMITs of the peers we used."""
    t_sync: float = 5.0
    """A resyncing node waits this long for a MODEL_REPLY before going on with its own model."""
    # --- retries and thresholds
    max_retries: int = 2
    """A_max: RETRY attempts after the first contribution attempt."""
    min_contributors: int = 1
    """u_min: fewer usable contributions than this aborts the round (self-loop).
    1 in plaintext mode; secure aggregation raises it to 3."""
    # --- overlay
    degree: int = 8
    """Overlay degree; a federation of at most degree + 1 members is a full mesh (exact averaging
    each round, like FedAvg, at degree x model size per node per round)."""
    # --- message windows
    rounds_behind: int = 1
    rounds_ahead: int = 2
    """Messages up to this many rounds ahead are buffered; beyond, a HELLO triggers resync."""
    max_buffered: int = 512
    """Upper bound on buffered future-round messages (oldest dropped first)."""
    timestamp_window_s: float = 60.0
    max_message_bytes: int = 64 * 1024 * 1024
    # --- update and contribution bounds
    update_clip: float | None = None
    """L2 bound C on the local update x^{r+1/2} - x^r (None: no clipping)."""
    max_distance: float | None = None
    """Reject a contribution farther than this (L2) from our own x^{r+1/2} (None: off)."""
    max_abs: float | None = 2.0 ** 20
    """Per-coordinate divergence guard for received float payloads (B_max)."""
    exclude_rounds: int = 20
    """A peer proven faulty (a signed message of its own with bad content: non-finite, out of bounds,
    wrong layout) stays out of this node's overlay view for this many rounds (0: never); see
    :mod:`fednode.gossip.exclusion`."""
    filter_exclude_after: int = 3
    filter_window: int = 10
    """A neighbour dropped by the validation filter, or found farther than ``far_ratio`` tau by the
    clipped aggregator, in ``filter_exclude_after`` of the last ``filter_window`` rounds is excluded
    for ``exclude_rounds`` too (0: such suspicion never excludes)."""
    # --- secure aggregation
    secure_aggregation: str = "off"
    """"off" (plaintext gossip), "retry" (mode A: masked sums, re-masked over the survivors after a
    dropout) or "secagg+" (mode B: self-masks and Shamir-shared keys, dropouts recovered without retry).
    Excludes the robust aggregators: masked sums cannot be clipped or trimmed per contributor."""
    dp_distributed: tuple[float, float, int] | None = None
    """Distributed DP (noise multiplier z, clip C, colluders c): each contributor adds N(0, (z C)^2 /
    (|U| - c)) to the value it masks, so the aggregator's sum carries the Gaussian mechanism's noise."""
    # --- aggregation rule (plaintext only)
    aggregator: str = "gossip"
    clip_tau: float | None = None
    """ClippedGossip radius; None = adaptive (:func:`fednode.aggregation.adaptive_tau`: the ceil(m/2)-th
    closest of m equally weighted neighbours)."""
    far_ratio: float | None = 2.0
    """With the clipped aggregator: a neighbour farther than this many times the round's radius tau
    counts like a validation-filter drop towards exclusion (``filter_exclude_after`` of the last
    ``filter_window`` rounds); None: off. Honest digits neighbours stay within 1.7 tau (p99)."""
    trim: int = 1
    validation_filter: bool = False
    """Score each neighbour's contribution on a held-out slice of the node's data before mixing (the runtime
    injects the scorer as ``GossipNode.contribution_filter``); plaintext only."""
    # --- run length
    max_rounds: int | None = None
    """Stop after this many rounds (None: run forever)."""

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
        for name in ("t_hello", "t_agg", "t_commit", "t_sync"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_retries < 0 or self.min_contributors < 1 or self.degree < 1 or min(self.exclude_rounds, self.filter_exclude_after) < 0 or self.filter_window < 1:
            raise ValueError("max_retries >= 0, min_contributors >= 1, degree >= 1, exclude_rounds >= 0, "
                             "filter_exclude_after >= 0 and filter_window >= 1 are required")
        if self.far_ratio is not None and not self.far_ratio > 1:
            raise ValueError("far_ratio must be > 1 (or None: off)")
        if self.update_clip is not None and not self.update_clip > 0:
            raise ValueError("update_clip must be > 0")
        if self.secure_aggregation not in SECURE_AGGREGATION_MODES:
            raise ValueError(f"unknown secure_aggregation mode {self.secure_aggregation!r}; choose one of "
                             f"{', '.join(SECURE_AGGREGATION_MODES)}")
        if self.secure and self.aggregator != "gossip":
            raise ValueError(f"secure aggregation excludes the {self.aggregator!r} aggregator: masked sums cannot be "
                             "clipped, trimmed or filtered per contributor (see docs/security.md)")
        if self.secure and self.validation_filter:
            raise ValueError("secure aggregation excludes the validation filter: a masked contribution cannot be scored")
        if self.dp_distributed is not None and not self.secure:
            raise ValueError("distributed DP needs secure aggregation")
        if self.secure and self.max_distance is not None:
            raise ValueError("secure aggregation excludes max_distance: a masked contribution has no readable distance")

    @property
    def secure(self) -> bool:
        """True when contributions are masked (any mode but "off")."""
        return self.secure_aggregation != "off"

    @property
    def u_min(self) -> int:
        """The smallest contributor set an aggregation runs over (3 with secure aggregation)."""
        return max(self.min_contributors, SECURE_U_MIN) if self.secure else self.min_contributors

    def round_length_bound(self, t_train: float) -> float:
        """Upper bound on one round at a live node whose local step takes ``t_train``."""
        reveal = self.t_commit if self.secure else 0.0
        return max(t_train, self.t_hello) + (self.max_retries + 1) * self.t_agg + reveal + self.t_commit
