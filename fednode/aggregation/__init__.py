"""Pure array math of gossip averaging: mixing weights, averaging, robust rules, consensus, push-sum."""

from fednode.aggregation.averaging import apply_usage, asymmetric_drift, mix, mix_matrix, weighted_average
from fednode.aggregation.consensus import consensus_distance, disagreement, disagreement_models, spectral_factor
from fednode.aggregation.mixing import drop_edges, metropolis_hastings_weights, mh_weight
from fednode.aggregation.robust import (adaptive_tau, clip_vector, clipped_gossip, coordinate_median, far_neighbours,
                                       neighbour_distances, trimmed_mean)

__all__ = ["mh_weight", "metropolis_hastings_weights", "drop_edges", "mix", "mix_matrix", "weighted_average",
           "asymmetric_drift", "apply_usage", "clip_vector", "adaptive_tau", "clipped_gossip", "far_neighbours",
           "neighbour_distances", "trimmed_mean",
           "coordinate_median", "disagreement", "disagreement_models", "consensus_distance", "spectral_factor"]
